//! Job names: each becomes a directory name (`<tier root>/<job>/rank<R>/`), so a name from
//! the command line, the config or a manifest is checked by one rule before it is joined
//! to a path: `../x` or `/abs` would put images (or look for them) outside the tier.

/// Longer names are not a label anyone types; they also keep image paths far below PATH_MAX.
pub const MAX_JOB_NAME_BYTES: usize = 128;

/// What is wrong with a job name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobNameError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_JOB_NAME_BYTES} bytes")]
    TooLong,
    #[error("starts with `.` (`.`, `..` and hidden directories are not job directories)")]
    LeadingDot,
    #[error("contains {0:?}; use letters, digits and `-_.+@,=:` only (no `/`, no spaces)")]
    BadChar(char),
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.+@,=:".contains(c)
}

/// Checks that `name` can be a job directory name.
pub fn check_job_name(name: &str) -> Result<(), JobNameError> {
    if name.is_empty() {
        return Err(JobNameError::Empty);
    }
    if name.len() > MAX_JOB_NAME_BYTES {
        return Err(JobNameError::TooLong);
    }
    if name.starts_with('.') {
        return Err(JobNameError::LeadingDot);
    }
    match name.chars().find(|&c| !allowed(c)) {
        Some(c) => Err(JobNameError::BadChar(c)),
        None => Ok(()),
    }
}

/// A job name made from a program's file name (the default when none is given): characters
/// a name may not hold become `_`, so `my prog` runs as job `my_prog` rather than failing.
pub fn job_name_from_program(file_name: &str) -> String {
    let mut name: String = file_name
        .trim_start_matches('.')
        .chars()
        .map(|c| if allowed(c) { c } else { '_' })
        .collect();
    // Cut on a char boundary: every char kept is ASCII, so any byte index is one.
    name.truncate(MAX_JOB_NAME_BYTES);
    if name.is_empty() { "job".into() } else { name }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for name in ["sim", "a.b", "x-1_2", "lammps+gpu", "r@host:1"] {
            assert_eq!(check_job_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn path_like_and_odd_names_are_refused() {
        assert_eq!(check_job_name(""), Err(JobNameError::Empty));
        assert_eq!(check_job_name(".."), Err(JobNameError::LeadingDot));
        assert_eq!(check_job_name("../../x"), Err(JobNameError::LeadingDot));
        assert_eq!(check_job_name("/abs"), Err(JobNameError::BadChar('/')));
        assert_eq!(check_job_name("a/b"), Err(JobNameError::BadChar('/')));
        assert_eq!(check_job_name("a\0b"), Err(JobNameError::BadChar('\0')));
        assert_eq!(check_job_name("a b"), Err(JobNameError::BadChar(' ')));
        assert_eq!(check_job_name(&"x".repeat(129)), Err(JobNameError::TooLong));
        assert_eq!(check_job_name(&"x".repeat(128)), Ok(()));
    }

    #[test]
    fn program_names_become_valid_job_names() {
        for (file, want) in [
            ("sim", "sim"),
            ("my prog", "my_prog"),
            (".hidden", "hidden"),
            ("..", "job"),
            ("é", "_"),
        ] {
            let name = job_name_from_program(file);
            assert_eq!(name, want);
            assert_eq!(check_job_name(&name), Ok(()));
        }
        assert_eq!(job_name_from_program(&"y".repeat(300)).len(), 128);
    }
}
