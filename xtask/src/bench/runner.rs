//! Repeating a measurement and summarising it: median and spread, never a single run.
use anyhow::{Context, Result, bail};

/// How many samples and how long each lasts.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub repeats: usize,
    pub sample: std::time::Duration,
}

/// The samples of one figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub samples: Vec<f64>,
}

impl Stats {
    pub fn new(mut samples: Vec<f64>) -> Result<Self> {
        if samples.is_empty() || samples.iter().any(|s| !s.is_finite()) {
            bail!("no usable samples: {samples:?}");
        }
        samples.sort_by(|a, b| a.total_cmp(b));
        Ok(Stats { samples })
    }

    pub fn median(&self) -> f64 {
        let s = &self.samples;
        let m = s.len() / 2;
        if s.len() % 2 == 1 {
            s[m]
        } else {
            (s[m - 1] + s[m]) / 2.0
        }
    }

    pub fn min(&self) -> f64 {
        self.samples[0]
    }

    pub fn max(&self) -> f64 {
        self.samples[self.samples.len() - 1]
    }

    /// Half the range of the samples, relative to the median, in percent.
    pub fn spread_pct(&self) -> f64 {
        let m = self.median();
        if m == 0.0 {
            return 0.0;
        }
        (self.max() - self.min()) / 2.0 / m.abs() * 100.0
    }
}

/// Runs `sample` `repeats` times and collects what each run returns.
/// The same failure for another row (errors are not Clone; rows print them with `{:#}`).
pub fn same_error(e: &anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

pub fn repeat(
    what: &str,
    repeats: usize,
    mut sample: impl FnMut(usize) -> Result<f64>,
) -> Result<Stats> {
    let mut out = Vec::with_capacity(repeats);
    for i in 0..repeats {
        out.push(sample(i).with_context(|| format!("{what}, sample {} of {repeats}", i + 1))?);
    }
    Stats::new(out).with_context(|| what.to_string())
}

/// A named source of samples.
pub type Sampler<'a> = Box<dyn FnMut() -> Result<f64> + 'a>;
/// A sampler of several figures at once (taken from one run).
pub type SamplerOf<'a, T> = Box<dyn FnMut() -> Result<T> + 'a>;

/// Takes `repeats` samples from each sampler, round-robin (A B C A B C ...), so load that
/// comes and goes on a shared machine hits every subject alike and their ratios hold. A
/// sampler that fails is dropped from later rounds and reports its error.
pub fn interleave(repeats: usize, samplers: Vec<(String, Sampler<'_>)>) -> Vec<Result<Stats>> {
    let names: Vec<String> = samplers.iter().map(|(w, _)| w.clone()).collect();
    interleave_each(repeats, samplers)
        .into_iter()
        .zip(names)
        .map(|(s, what)| s.and_then(|v| Stats::new(v).with_context(|| what)))
        .collect()
}

/// [`interleave`] for samplers of any kind of sample: each one's samples, in order.
pub fn interleave_each<T>(
    repeats: usize,
    mut samplers: Vec<(String, SamplerOf<'_, T>)>,
) -> Vec<Result<Vec<T>>> {
    let mut samples: Vec<Result<Vec<T>>> = samplers.iter().map(|_| Ok(Vec::new())).collect();
    for round in 0..repeats {
        for ((what, sampler), out) in samplers.iter_mut().zip(samples.iter_mut()) {
            let Ok(v) = out else { continue };
            match sampler() {
                Ok(x) => v.push(x),
                Err(e) => {
                    *out = Err(e.context(format!("{what}, sample {} of {repeats}", round + 1)))
                }
            }
        }
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread_of_odd_and_even_samples() {
        let s = Stats::new(vec![5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.median(), s.min(), s.max()), (3.0, 1.0, 5.0));
        assert!((s.spread_pct() - 66.666).abs() < 0.01);
        let s = Stats::new(vec![4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median(), 2.5);
        assert!(Stats::new(vec![]).is_err());
        assert!(Stats::new(vec![1.0, f64::NAN]).is_err());
    }

    #[test]
    fn interleave_alternates_and_keeps_failures_apart() {
        let order = std::cell::RefCell::new(Vec::new());
        let a: Sampler = Box::new(|| {
            order.borrow_mut().push('a');
            Ok(1.0)
        });
        let mut n = 0;
        let b: Sampler = Box::new(|| {
            order.borrow_mut().push('b');
            n += 1;
            if n == 2 { bail!("lost") } else { Ok(2.0) }
        });
        let r = interleave(3, vec![("a".into(), a), ("b".into(), b)]);
        assert_eq!(*order.borrow(), vec!['a', 'b', 'a', 'b', 'a']);
        assert_eq!(r[0].as_ref().unwrap().samples, vec![1.0; 3]);
        assert!(format!("{:#}", r[1].as_ref().unwrap_err()).contains("b, sample 2 of 3: lost"));
    }

    #[test]
    fn repeat_names_the_failing_sample() {
        let err = repeat("rr", 3, |i| if i == 1 { bail!("boom") } else { Ok(1.0) }).unwrap_err();
        assert!(format!("{err:#}").contains("rr, sample 2 of 3: boom"));
    }
}
