//! Globs over node names (the part before `@`): `*` matches any run of characters,
//! `?` one. Routes (`nodes`), pins' client names (`dist.client_names`) and
//! `allow_peers` all match names this way.

use std::fmt;

use serde::Deserialize;

/// A glob that cannot be used; the message is what the configuration error says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// `nodes = ""`.
    #[error("an empty pattern matches no node name")]
    Empty,
    /// A pattern with `@host`.
    #[error("match the name part only, without `@host`")]
    Host,
}

impl GlobError {
    /// A bounded label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            GlobError::Empty => "empty_pattern",
            GlobError::Host => "host_in_pattern",
        }
    }
}

/// A glob over node names: `*` matches any run of characters, `?` one character.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Glob(String);

impl TryFrom<String> for Glob {
    type Error = GlobError;
    fn try_from(s: String) -> Result<Glob, GlobError> {
        Glob::new(&s)
    }
}

impl Glob {
    /// A glob over name parts; refuses the empty pattern and one with `@`.
    pub fn new(pattern: &str) -> Result<Glob, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        if pattern.contains('@') {
            return Err(GlobError::Host);
        }
        Ok(Glob(pattern.to_owned()))
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        wildcard_match(&self.0, name)
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters and `?`
/// one, by the classic two-pointer wildcard walk (linear in practice, no recursion).
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (pattern, name): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), name.chars().collect());
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == '?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                // Let the last star swallow one more character.
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(p: &str) -> Glob {
        Glob::new(p).unwrap()
    }

    #[test]
    fn globs_match_like_shells() {
        let cases = [
            ("app-*", "app-0", true),
            ("app-*", "app-", true),
            ("app-*", "app", false),
            ("app-*", "web-0", false),
            ("*", "anything", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*-worker-*", "eu-worker-7", true),
            ("*-worker-*", "eu-worker", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("ü*", "über", true),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(glob(pattern).matches(name), expected, "{pattern} ~ {name}");
        }
    }

    #[test]
    fn globs_refuse_hosts_and_emptiness() {
        assert!(Glob::new("").is_err());
        assert!(Glob::new("app@host").is_err());
    }
}
