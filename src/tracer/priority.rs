//! A checkpoint runs ahead of the job while it lasts. A job that keeps every core busy (16
//! threads on 2 cores, say) otherwise leaves mlckpt's threads one share among many: the
//! checkpoint of 1 GiB took 5-6 s instead of 1.7 s here, and for all that time the job pays
//! copy-on-write copies for its snapshot and holds its image half written. Only a
//! privileged mlckpt may raise its priority; others run as they are.

use super::sys;

/// The nice value of mlckpt's threads during a checkpoint.
const CHECKPOINT_NICE: i32 = -10;

/// Raises every thread of this process to `CHECKPOINT_NICE` until dropped; threads started
/// meanwhile (which inherit it) are set back too.
pub struct CheckpointPriority {
    /// The nice value to go back to; None if it was not raised.
    before: Option<i32>,
}

impl CheckpointPriority {
    pub fn raise() -> CheckpointPriority {
        let before = sys::thread_nice(0)
            .ok()
            .filter(|&nice| nice > CHECKPOINT_NICE)
            .filter(|_| sys::set_thread_nice(0, CHECKPOINT_NICE).is_ok());
        if before.is_some() {
            set_all(CHECKPOINT_NICE);
        }
        CheckpointPriority { before }
    }
}

impl Drop for CheckpointPriority {
    fn drop(&mut self) {
        if let Some(nice) = self.before {
            set_all(nice);
        }
    }
}

/// Sets every thread of this process to `nice` (best effort: a thread may be ending).
fn set_all(nice: i32) {
    let Ok(tasks) = std::fs::read_dir("/proc/thread-self/..") else {
        return;
    };
    for tid in tasks
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let _ = sys::set_thread_nice(tid, nice);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raised_while_held_and_set_back_after() {
        let before = sys::thread_nice(0).unwrap();
        {
            let held = CheckpointPriority::raise();
            if held.before.is_some() {
                assert_eq!(sys::thread_nice(0), Ok(CHECKPOINT_NICE));
                let started = std::thread::spawn(|| sys::thread_nice(0).unwrap());
                assert_eq!(started.join().unwrap(), CHECKPOINT_NICE, "inherited");
            }
        }
        assert_eq!(sys::thread_nice(0), Ok(before));
    }
}
