//! A worker's stdout and stderr, one pipe the host reads: logged a line at a time (with
//! plugin and generation), the last lines kept to tell why the worker died.
//!
//! Its end of file never marks the worker's end: a process the plugin started inherits the
//! pipe and may hold it open long after the worker is gone. So once the worker has exited,
//! what is left in the pipe is read without waiting for the end, within [`DRAIN_TIME`].

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::process::Label;

/// The last lines of a worker's output kept to tell why it died.
const KEPT_LINES: usize = 32;
/// How long the output of a worker that has exited is read before the host stops reading
/// it: time for the processes of its group, killed with it, to close the pipe.
pub(crate) const DRAIN_TIME: Duration = Duration::from_millis(200);

pub(crate) struct Output {
    pub(crate) fd: OwnedFd,
    /// The pipe has not reached its end.
    pub(crate) open: bool,
    partial: Vec<u8>,
    /// The last lines, oldest first.
    pub(crate) last: VecDeque<String>,
}

impl Output {
    pub(crate) fn new(fd: OwnedFd) -> Output {
        Output {
            fd,
            open: true,
            partial: Vec::new(),
            last: VecDeque::new(),
        }
    }

    /// Reads what is there (the pipe is readable) and logs whole lines.
    pub(crate) fn read(&mut self, label: &Label) {
        let mut chunk = [0u8; 8192];
        // SAFETY: the descriptor is owned by `self`; `chunk` is valid for its length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
        if n <= 0 {
            if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                self.open = false;
                self.flush(label);
            }
            return;
        }
        self.partial.extend_from_slice(&chunk[..n as usize]);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            self.line(label, line);
        }
        // A line that never ends is logged in pieces.
        if self.partial.len() > 16 * 1024 {
            let line = String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned();
            self.line(label, line);
        }
    }

    /// After the worker has exited: reads what it left in the pipe until the end, or until
    /// nothing more comes within [`DRAIN_TIME`] in all (someone else holds the pipe). Never
    /// blocks longer than that.
    pub(crate) fn drain(&mut self, label: &Label) {
        let until = Instant::now() + DRAIN_TIME;
        while self.open {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    "stopped reading the worker's output {} ms after it exited: a process it \
                     started outside its process group still holds the pipe",
                    DRAIN_TIME.as_millis()
                );
                self.flush(label);
                return;
            }
            let mut fd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, whose descriptor `self` owns.
            let ready = unsafe { libc::poll(&mut fd, 1, left.as_millis().max(1) as libc::c_int) };
            if ready > 0 {
                self.read(label);
            } else if ready < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                self.flush(label);
                return;
            }
        }
    }

    /// Logs a last line that has no end.
    fn flush(&mut self, label: &Label) {
        if !self.partial.is_empty() {
            let line = String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned();
            self.line(label, line);
        }
    }

    fn line(&mut self, label: &Label, line: String) {
        if line.trim().is_empty() {
            return;
        }
        tracing::warn!(target: "plugin", plugin = %label.plugin, generation = label.generation, "{line}");
        if self.last.len() == KEPT_LINES {
            self.last.pop_front();
        }
        self.last.push_back(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::FromRawFd;

    #[test]
    fn a_drain_keeps_the_last_words_and_never_waits_for_a_pipe_someone_else_holds() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both are new open descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut held = std::fs::File::from(write);
        held.write_all(b"last words\nno end").unwrap();
        let label = Label {
            plugin: "tough".into(),
            generation: 1,
            timeout_ms: 1,
            kill_after_ms: 1,
            max_memory_mb: None,
        };
        let mut output = Output::new(read);
        let start = Instant::now();
        // `held` stays open, as a process the worker left behind would keep it.
        output.drain(&label);
        assert!(start.elapsed() < DRAIN_TIME * 5, "{:?}", start.elapsed());
        assert_eq!(output.last, ["last words", "no end"]);
        drop(held);
    }
}
