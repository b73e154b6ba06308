//! Typed, borrowed access to the fields of a parsed JSON object, with the contract's
//! codes on failure: absent required field → 1002, wrong JSON type → 1003. Values keep
//! borrowing from the message buffer that simd-json parsed in place.

use simd_json::prelude::*;
use simd_json::BorrowedValue;

use super::error::TaskError;

/// A JSON object seen through its dotted path (`job`, `options.retry`), for messages that
/// name the exact field.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a, 'v> {
    value: &'a BorrowedValue<'v>,
    path: &'static str,
}

impl<'a, 'v> Fields<'a, 'v> {
    /// `value` must be an object for any field to be found; callers check that first.
    pub fn new(value: &'a BorrowedValue<'v>, path: &'static str) -> Self {
        Fields { value, path }
    }

    pub fn value(&self) -> &'a BorrowedValue<'v> {
        self.value
    }

    fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The field, absent when missing or JSON `null`.
    pub fn get(&self, key: &str) -> Option<&'a BorrowedValue<'v>> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>, TaskError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| TaskError::format(&self.name(key), "a string")),
        }
    }

    pub fn req_str(&self, key: &str) -> Result<&'a str, TaskError> {
        self.opt_str(key)?
            .ok_or_else(|| TaskError::missing(&self.name(key)))
    }

    /// A required string that must not be empty (empty counts as missing).
    pub fn req_nonempty(&self, key: &str) -> Result<&'a str, TaskError> {
        match self.req_str(key)? {
            "" => Err(TaskError::missing(&self.name(key))),
            s => Ok(s),
        }
    }

    /// First of several accepted names (`connection_string` / `connection`).
    pub fn opt_str_any(&self, keys: &[&str]) -> Result<Option<&'a str>, TaskError> {
        for key in keys {
            if let Some(s) = self.opt_str(key)? {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, TaskError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                if let Some(n) = v.as_u64() {
                    return Ok(Some(n));
                }
                if v.as_i64().is_some() {
                    return Err(TaskError::invalid(&self.name(key), "must not be negative"));
                }
                // 5000.0 is accepted as 5000; 5000.5 is not an integer.
                match v.as_f64() {
                    Some(f) if f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64 => {
                        Ok(Some(f as u64))
                    }
                    Some(_) => Err(TaskError::invalid(
                        &self.name(key),
                        "must be a non-negative integer",
                    )),
                    None => Err(TaskError::format(&self.name(key), "an integer")),
                }
            }
        }
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, TaskError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .cast_f64()
                .map(Some)
                .ok_or_else(|| TaskError::format(&self.name(key), "a number")),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, TaskError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| TaskError::format(&self.name(key), "a boolean")),
        }
    }

    pub fn opt_object(&self, key: &'static str) -> Result<Option<Fields<'a, 'v>>, TaskError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) if v.is_object() => Ok(Some(Fields::new(v, key))),
            Some(_) => Err(TaskError::format(&self.name(key), "an object")),
        }
    }

    pub fn opt_array(&self, key: &str) -> Result<Option<&'a [BorrowedValue<'v>]>, TaskError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .map(|a| Some(a.as_slice()))
                .ok_or_else(|| TaskError::format(&self.name(key), "an array")),
        }
    }

    /// An array of strings.
    pub fn opt_str_list(&self, key: &str) -> Result<Option<Vec<&'a str>>, TaskError> {
        let Some(items) = self.opt_array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| TaskError::format(&self.name(key), "an array of strings"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

/// A scalar id as the Router may send it (string or number), echoed back as a string.
pub fn id_string(v: &BorrowedValue<'_>) -> Option<String> {
    if let Some(s) = v.as_str() {
        return Some(s.to_owned());
    }
    if let Some(n) = v.as_i64() {
        return Some(n.to_string());
    }
    if let Some(n) = v.as_u64() {
        return Some(n.to_string());
    }
    None
}
