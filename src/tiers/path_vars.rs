//! `$VAR` and `${VAR}` in the configuration's path values, such as
//! `[storage] local = "$TMPDIR/mlckpt"` or `global = "/scratch/${USER}/ckpt/${SLURM_JOB_ID}"`:
//! on a cluster one file serves many users and jobs, and their paths differ only by such
//! variables.
//!
//! Deliberately not a shell: no defaults (`${X:-y}`), no `~`, no commands. Anything that is
//! not a plain variable is an error instead of a guess, and so is a variable that is unset
//! or empty: expanding it to nothing would turn `$TMPDIR/mlckpt` into `/mlckpt`, a directory
//! the user never meant, possibly shared with other users.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// Why a value could not be expanded. Messages read after `key: ` in a config error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error(
        "${name} is not set in the environment; set it, or write the path without it \
         (`$$` gives a literal `$`)"
    )]
    Unset { name: String },

    #[error(
        "${name} is set but empty, which would silently change the path; give it a value, \
         or write the path without it"
    )]
    Empty { name: String },

    #[error(
        "`${{` at character {at} has no closing `}}`; write `${{NAME}}`, or `$$` for a \
         literal `$`"
    )]
    Unclosed { at: usize },

    #[error(
        "`${{{written}}}` is not a variable: only `$NAME` and `${{NAME}}` (letters, digits, \
         `_`, not starting with a digit) are expanded, no shell forms such as `${{X:-y}}`; \
         write `$$` for a literal `$`"
    )]
    BadName { written: String },

    #[error(
        "`$` at character {at} is not followed by a variable name; write `$NAME`, \
         `${{NAME}}`, or `$$` for a literal `$`"
    )]
    LoneDollar { at: usize },
}

/// `text` with every `$NAME` and `${NAME}` replaced by `lookup(NAME)` and every `$$` by `$`.
/// The result is bytes, not UTF-8: a variable may hold any path the OS accepts.
pub fn expand(
    text: &str,
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Result<OsString, ExpandError> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.extend_from_slice(&rest.as_bytes()[..dollar]);
        // Characters (not bytes) from the start, as a user counts them in the file.
        let at = text[..text.len() - rest.len() + dollar].chars().count() + 1;
        let after = &rest[dollar + 1..];
        let (name, consumed) = if let Some(tail) = after.strip_prefix('$') {
            out.push(b'$');
            rest = tail;
            continue;
        } else if let Some(braced) = after.strip_prefix('{') {
            let close = braced.find('}').ok_or(ExpandError::Unclosed { at })?;
            let name = &braced[..close];
            if !is_name(name) {
                return Err(ExpandError::BadName {
                    written: name.to_string(),
                });
            }
            (name, close + 2)
        } else {
            let len = name_len(after);
            if len == 0 {
                return Err(ExpandError::LoneDollar { at });
            }
            (&after[..len], len)
        };
        let value = lookup(name).ok_or_else(|| ExpandError::Unset {
            name: name.to_string(),
        })?;
        if value.is_empty() {
            return Err(ExpandError::Empty {
                name: name.to_string(),
            });
        }
        out.extend_from_slice(value.as_bytes());
        rest = &after[consumed..];
    }
    out.extend_from_slice(rest.as_bytes());
    Ok(OsString::from_vec(out))
}

/// The process environment, for [`expand`].
pub fn from_environment(name: &str) -> Option<OsString> {
    std::env::var_os(OsStr::new(name))
}

/// Length of the variable name `text` starts with (0: none), as POSIX sh reads `$NAME`.
fn name_len(text: &str) -> usize {
    let mut chars = text.char_indices();
    match chars.next() {
        Some((_, c)) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return 0,
    }
    chars
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(text.len(), |(i, _)| i)
}

fn is_name(text: &str) -> bool {
    !text.is_empty() && name_len(text) == text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<OsString> {
        match name {
            "USER" => Some("alice".into()),
            "TMPDIR" => Some("/local/tmp".into()),
            "JOB_1" => Some("42".into()),
            "EMPTY" => Some(OsString::new()),
            "RAW" => Some(OsString::from_vec(b"caf\xe9".to_vec())),
            _ => None,
        }
    }

    fn ok(text: &str) -> OsString {
        expand(text, env).unwrap()
    }

    fn err(text: &str) -> ExpandError {
        expand(text, env).unwrap_err()
    }

    #[test]
    fn text_without_variables_is_unchanged() {
        assert_eq!(ok("/scratch/ckpt"), "/scratch/ckpt");
        assert_eq!(ok(""), "");
        assert_eq!(ok("ünï/cödé"), "ünï/cödé");
    }

    #[test]
    fn unbraced_names_end_at_the_first_other_character() {
        assert_eq!(ok("$TMPDIR/mlckpt"), "/local/tmp/mlckpt");
        assert_eq!(ok("/s/$USER.ckpt"), "/s/alice.ckpt");
        assert_eq!(ok("/s/$JOB_1"), "/s/42");
        assert_eq!(ok("$USER$JOB_1"), "alice42");
        // `$USERx` is the variable USERx, as in sh: unset here.
        assert_eq!(
            err("/s/$USERx"),
            ExpandError::Unset {
                name: "USERx".into()
            }
        );
    }

    #[test]
    fn braced_names() {
        assert_eq!(
            ok("/scratch/${USER}/ckpt/${JOB_1}"),
            "/scratch/alice/ckpt/42"
        );
        assert_eq!(ok("${USER}x"), "alicex");
        assert_eq!(ok("${TMPDIR}"), "/local/tmp");
    }

    #[test]
    fn double_dollar_is_a_literal_dollar() {
        assert_eq!(ok("/a/$$/b"), "/a/$/b");
        assert_eq!(ok("$$USER"), "$USER");
        assert_eq!(ok("$$$USER"), "$alice");
        assert_eq!(ok("$${USER}"), "${USER}");
        assert_eq!(ok("x$$"), "x$");
    }

    #[test]
    fn unset_and_empty_variables_are_errors_naming_them() {
        assert_eq!(
            err("/scratch/${NOPE}/x"),
            ExpandError::Unset {
                name: "NOPE".into()
            }
        );
        assert_eq!(
            err("$EMPTY/ckpt"),
            ExpandError::Empty {
                name: "EMPTY".into()
            }
        );
        let message = err("$NOPE").to_string();
        assert!(message.starts_with("$NOPE is not set"), "{message}");
    }

    #[test]
    fn bad_syntax() {
        assert_eq!(err("/a/${USER"), ExpandError::Unclosed { at: 4 });
        assert_eq!(err("${"), ExpandError::Unclosed { at: 1 });
        assert_eq!(
            err("${}"),
            ExpandError::BadName {
                written: String::new()
            }
        );
        assert_eq!(
            err("${USER:-bob}"),
            ExpandError::BadName {
                written: "USER:-bob".into()
            }
        );
        assert_eq!(
            err("${1X}"),
            ExpandError::BadName {
                written: "1X".into()
            }
        );
        assert_eq!(err("/a/$"), ExpandError::LoneDollar { at: 4 });
        assert_eq!(err("/a/$/b"), ExpandError::LoneDollar { at: 4 });
        assert_eq!(err("$1"), ExpandError::LoneDollar { at: 1 });
        // Columns count characters, not bytes.
        assert_eq!(err("é$-"), ExpandError::LoneDollar { at: 2 });
        assert!(err("${USER:-bob}").to_string().contains("`${USER:-bob}`"));
    }

    #[test]
    fn values_need_not_be_utf8() {
        assert_eq!(ok("/d/$RAW/x").as_bytes(), b"/d/caf\xe9/x");
    }
}
