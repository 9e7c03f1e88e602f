//! Resource limits of one instance: linear memory, tables, fuel, wall-clock time.
//!
//! [`Limits`] is what the caller asks for; [`StoreLimiter`] enforces memory and table
//! growth inside the store; [`LimitExceeded`] is the error a guest is stopped with,
//! whose message names the limit and its value (`memory limit of 64 MiB exceeded`).
//! The stack bound is an engine setting ([`crate::EngineOptions::max_stack`]).

use std::fmt;
use std::time::Duration;

use crate::RuntimeError;

/// Table elements an instance may hold in all, by default: 10 million (80 MiB of host
/// memory), far above what real programs use and far below what hurts the host.
pub const DEFAULT_MAX_TABLE_ELEMENTS: u64 = 10_000_000;

/// What one instance may use. The default is no memory bound below Wasm32's own 4 GiB,
/// no deadline and no fuel budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of linear memory across all the instance's memories.
    pub max_memory: Option<u64>,
    /// Total elements across all the instance's tables.
    pub max_table_elements: u64,
    /// Wall-clock time from the start of the guest's entry point.
    pub timeout: Option<Duration>,
    /// Units of fuel (roughly, Wasm instructions); needs an engine built with
    /// [`crate::EngineOptions::fuel`].
    pub fuel: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_memory: None,
            max_table_elements: DEFAULT_MAX_TABLE_ELEMENTS,
            timeout: None,
            fuel: None,
        }
    }
}

/// The limit that stopped a guest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitExceeded {
    #[error("memory limit of {} exceeded", Size(*limit))]
    Memory { limit: u64 },
    #[error("table limit of {limit} elements exceeded")]
    Table { limit: u64 },
    #[error("timed out after {}", Dur(*limit))]
    Timeout { limit: Duration },
    #[error("fuel budget of {limit} exhausted")]
    Fuel { limit: u64 },
    #[error("stack limit of {} exceeded", Size(*limit as u64))]
    Stack { limit: usize },
}

/// Enforces [`Limits::max_memory`] and [`Limits::max_table_elements`] as totals over
/// the store. Growth past a limit traps with [`LimitExceeded`] rather than failing
/// quietly, so the guest ends with a message naming the limit.
#[derive(Debug)]
pub(crate) struct StoreLimiter {
    max_memory: Option<u64>,
    max_table_elements: u64,
    memory_in_use: u64,
    table_elements_in_use: u64,
}

impl StoreLimiter {
    pub(crate) fn new(limits: &Limits) -> StoreLimiter {
        StoreLimiter {
            max_memory: limits.max_memory,
            max_table_elements: limits.max_table_elements,
            memory_in_use: 0,
            table_elements_in_use: 0,
        }
    }
}

impl wasmtime::ResourceLimiter for StoreLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current) as u64;
        let total = self.memory_in_use.saturating_add(growth);
        if let Some(limit) = self.max_memory
            && total > limit
        {
            return Err(LimitExceeded::Memory { limit }.into());
        }
        self.memory_in_use = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current) as u64;
        let total = self.table_elements_in_use.saturating_add(growth);
        if total > self.max_table_elements {
            return Err(LimitExceeded::Table {
                limit: self.max_table_elements,
            }
            .into());
        }
        self.table_elements_in_use = total;
        Ok(true)
    }

    // One instance per store, and a bounded number of memories and tables, so a module
    // cannot make the host reserve address space without end.
    fn instances(&self) -> usize {
        1
    }
    fn memories(&self) -> usize {
        16
    }
    fn tables(&self) -> usize {
        64
    }
}

/// Formats a byte count the way users write it: `64 MiB`, `1.5 GiB`, `512 KiB`, `100 B`.
#[derive(Debug, Clone, Copy)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, unit) in UNITS {
            if self.0 >= unit {
                return if self.0.is_multiple_of(unit) {
                    write!(f, "{} {name}", self.0 / unit)
                } else {
                    write!(f, "{:.1} {name}", self.0 as f64 / unit as f64)
                };
            }
        }
        write!(f, "{} B", self.0)
    }
}

/// Formats a duration the way users write it: `2s`, `150ms`, `1.5s`.
#[derive(Debug, Clone, Copy)]
pub struct Dur(pub Duration);

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms >= 1000 && ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else if ms >= 1000 {
            write!(f, "{:.3}s", self.0.as_secs_f64())
        } else if ms > 0 {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}us", self.0.as_micros())
        }
    }
}

/// Parses a size such as `64MiB`, `64M`, `1.5GiB`, `4096` (bytes) or `512 KiB`.
/// Units are binary (`K` = `KiB` = 1024); `KB`/`MB`/`GB` are decimal.
///
/// # Errors
/// [`RuntimeError::InvalidValue`] naming the text when it is not a size.
pub fn parse_size(text: &str) -> Result<u64, RuntimeError> {
    let bad = || RuntimeError::InvalidValue {
        what: "size",
        text: text.to_owned(),
        expected: "a number with an optional unit, such as 64MiB, 512K or 2G",
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "ki" => 1 << 10,
        "m" | "mib" | "mi" => 1 << 20,
        "g" | "gib" | "gi" => 1 << 30,
        "t" | "tib" | "ti" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    let bytes = value * factor as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes.round() as u64)
}

/// Parses a duration such as `2s`, `150ms`, `1.5s`, `2m`, `1h` or `500us`. A bare
/// number is seconds.
///
/// # Errors
/// [`RuntimeError::InvalidValue`] naming the text when it is not a duration.
pub fn parse_duration(text: &str) -> Result<Duration, RuntimeError> {
    let bad = || RuntimeError::InvalidValue {
        what: "duration",
        text: text.to_owned(),
        expected: "a number with a unit, such as 2s, 150ms, 1.5s, 2m or 1h",
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad())?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "ns" => value / 1e9,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_size(text: &str, expect: Option<u64>) {
        assert_eq!(parse_size(text).ok(), expect, "parse_size({text:?})");
    }

    #[test]
    fn sizes_parse() {
        check_size("64MiB", Some(64 << 20));
        check_size("64M", Some(64 << 20));
        check_size("64 MiB", Some(64 << 20));
        check_size("1.5GiB", Some(3 << 29));
        check_size("4096", Some(4096));
        check_size("10MB", Some(10_000_000));
        check_size("", None);
        check_size("MiB", None);
        check_size("12 parsecs", None);
        check_size("-1M", None);
        check_size("1e400", None);
        check_size("99999999999999999999T", None);
    }

    #[test]
    fn durations_parse() {
        let d = |t: &str| parse_duration(t).ok();
        assert_eq!(d("2s"), Some(Duration::from_secs(2)));
        assert_eq!(d("150ms"), Some(Duration::from_millis(150)));
        assert_eq!(d("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(d("2m"), Some(Duration::from_secs(120)));
        assert_eq!(d("3"), Some(Duration::from_secs(3)));
        assert_eq!(d("2 days"), None);
        assert_eq!(d("s"), None);
        assert_eq!(d("1e999s"), None);
    }

    #[test]
    fn sizes_and_durations_print_like_users_write_them() {
        assert_eq!(Size(64 << 20).to_string(), "64 MiB");
        assert_eq!(Size(3 << 29).to_string(), "1.5 GiB");
        assert_eq!(Size(100).to_string(), "100 B");
        assert_eq!(Dur(Duration::from_secs(2)).to_string(), "2s");
        assert_eq!(Dur(Duration::from_millis(150)).to_string(), "150ms");
        assert_eq!(Dur(Duration::from_millis(1500)).to_string(), "1.500s");
    }

    #[test]
    fn limit_messages_name_limit_and_value() {
        let m = LimitExceeded::Memory { limit: 64 << 20 }.to_string();
        assert_eq!(m, "memory limit of 64 MiB exceeded");
        let t = LimitExceeded::Timeout {
            limit: Duration::from_secs(2),
        };
        assert_eq!(t.to_string(), "timed out after 2s");
    }

    /// The limiter refuses growth past the total, across several memories.
    #[test]
    fn limiter_counts_total_memory() {
        use wasmtime::ResourceLimiter;
        let mut l = StoreLimiter::new(&Limits {
            max_memory: Some(3 << 16),
            ..Limits::default()
        });
        assert!(l.memory_growing(0, 2 << 16, None).is_ok());
        assert!(l.memory_growing(0, 1 << 16, None).is_ok());
        let err = l.memory_growing(1 << 16, 2 << 16, None).expect_err("over");
        assert_eq!(err.to_string(), "memory limit of 192 KiB exceeded");
    }
}
