//! Watch output in the terms of what is stored: keys become ids, values typed items. Leases
//! and services decode their prefix's [`Update`]s with the same [`decode`], each with its
//! own [`Decode`]r; a value that does not decode is logged once per revision and skipped,
//! and a key overwritten with one no longer holds an item.
use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
};

use super::watch::{Change, Kv, Update};

/// How the keys and values under one prefix are read.
pub trait Decode {
    type Id;
    type Item;
    /// The id `key` names; `None` for keys that are not one of ours.
    fn id(&self, key: &str) -> Option<Self::Id>;
    /// The item stored in `kv` (whose key is `key`), or `None` (reported once per
    /// revision) when it is not a valid one.
    fn decode(&mut self, key: &str, kv: &Kv) -> Option<(Self::Id, Self::Item)>;
}

/// One typed change.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<I, T> {
    /// Created or changed.
    Upsert(I, T),
    /// Deleted, or overwritten with something invalid.
    Removed(I),
}

/// A watch [`Update`], decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded<I, T> {
    Events(Vec<Event<I, T>>),
    /// The watch had to start over: the complete current set.
    Resync(Vec<(I, T)>),
}

fn key_text(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// The valid items among `kvs` (a listing).
pub fn decode_all<D: Decode>(decoder: &mut D, kvs: &[Kv]) -> Vec<(D::Id, D::Item)> {
    kvs.iter()
        .filter_map(|kv| decoder.decode(&key_text(&kv.key), kv))
        .collect()
}

/// Decodes one watch update. Keys that name nothing are left out.
pub fn decode<D: Decode>(decoder: &mut D, update: Update) -> Decoded<D::Id, D::Item> {
    match update {
        Update::Resync(kvs) => Decoded::Resync(decode_all(decoder, &kvs)),
        Update::Changes(changes) => Decoded::Events(
            changes
                .into_iter()
                .filter_map(|change| match change {
                    Change::Put(kv) => {
                        let key = key_text(&kv.key);
                        match decoder.decode(&key, &kv) {
                            Some((id, item)) => Some(Event::Upsert(id, item)),
                            // Overwritten with something invalid: no longer usable.
                            None => decoder.id(&key).map(Event::Removed),
                        }
                    }
                    Change::Delete(key) => decoder.id(&key_text(&key)).map(Event::Removed),
                })
                .collect(),
        ),
    }
}

impl<I: Eq + Hash, T> Decoded<I, T> {
    /// Makes `set` what the update says it now is.
    pub fn apply_to(self, set: &mut HashMap<I, T>) {
        match self {
            Decoded::Events(events) => {
                for event in events {
                    match event {
                        Event::Upsert(id, item) => {
                            set.insert(id, item);
                        }
                        Event::Removed(id) => {
                            set.remove(&id);
                        }
                    }
                }
            }
            Decoded::Resync(items) => *set = items.into_iter().collect(),
        }
    }

    /// Adds the update to `changed` (id to its new item, `None`: gone), a batch of changes
    /// to a set whose ids are `known`: a resync replaces the batch and removes every known
    /// id it does not list.
    pub fn merge_into(
        self,
        changed: &mut HashMap<I, Option<T>>,
        known: impl IntoIterator<Item = I>,
    ) {
        match self {
            Decoded::Events(events) => {
                for event in events {
                    match event {
                        Event::Upsert(id, item) => changed.insert(id, Some(item)),
                        Event::Removed(id) => changed.insert(id, None),
                    };
                }
            }
            Decoded::Resync(items) => {
                *changed = known.into_iter().map(|id| (id, None)).collect();
                changed.extend(items.into_iter().map(|(id, item)| (id, Some(item))));
            }
        }
    }
}

/// Keys whose values were reported as invalid, at the revision reported, so that each
/// invalid value is logged once however often it is read.
#[derive(Debug, Default)]
pub struct Reported(HashSet<(String, i64)>);

impl Reported {
    /// `true` the first time `key` at `revision` is reported.
    pub fn first(&mut self, key: &str, revision: i64) -> bool {
        self.0.insert((key.to_string(), revision))
    }

    /// Forgets what was reported about `key` (it holds a valid value again).
    pub fn forget(&mut self, key: &str) {
        if !self.0.is_empty() {
            self.0.retain(|(k, _)| k != key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys `/p/<n>` holding a number.
    struct Numbers(Reported);

    impl Decode for Numbers {
        type Id = u32;
        type Item = u32;
        fn id(&self, key: &str) -> Option<u32> {
            key.strip_prefix("/p/")?.parse().ok()
        }
        fn decode(&mut self, key: &str, kv: &Kv) -> Option<(u32, u32)> {
            let id = self.id(key)?;
            match std::str::from_utf8(&kv.value).ok()?.parse() {
                Ok(n) => Some((id, n)),
                Err(_) => {
                    self.0.first(key, kv.mod_revision);
                    None
                }
            }
        }
    }

    fn kv(key: &str, value: &str, rev: i64) -> Kv {
        Kv {
            key: key.into(),
            value: value.into(),
            lease: 0,
            mod_revision: rev,
            create_revision: rev,
        }
    }

    #[test]
    fn changes_become_events() {
        let mut d = Numbers(Reported::default());
        let update = Update::Changes(vec![
            Change::Put(kv("/p/1", "10", 2)),
            Change::Put(kv("/p/2", "garbage", 3)),
            Change::Put(kv("/other", "5", 4)),
            Change::Delete(b"/p/3".to_vec()),
            Change::Delete(b"/other".to_vec()),
        ]);
        assert_eq!(
            decode(&mut d, update),
            Decoded::Events(vec![
                Event::Upsert(1, 10),
                Event::Removed(2),
                Event::Removed(3)
            ])
        );
        assert!(!d.0.first("/p/2", 3), "reported once");
    }

    #[test]
    fn a_resync_replaces_everything() {
        let mut d = Numbers(Reported::default());
        let resync = || Update::Resync(vec![kv("/p/1", "10", 2), kv("/p/2", "x", 3)]);
        let mut set = HashMap::from([(7, 70)]);
        decode(&mut d, resync()).apply_to(&mut set);
        assert_eq!(set, HashMap::from([(1, 10)]));

        let mut changed = HashMap::from([(5, Some(50))]);
        decode(&mut d, resync()).merge_into(&mut changed, [7, 1]);
        assert_eq!(changed, HashMap::from([(7, None), (1, Some(10))]));
        decode(
            &mut d,
            Update::Changes(vec![Change::Delete(b"/p/1".to_vec())]),
        )
        .merge_into(&mut changed, [7, 1]);
        assert_eq!(changed, HashMap::from([(7, None), (1, None)]));
    }
}
