//! A worker's stdout and stderr, one pipe the host reads: logged a line at a time (with
//! plugin and generation), the last lines kept to tell why the worker died.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::process::Label;

/// The last lines of a worker's output kept to tell why it died.
const KEPT_LINES: usize = 32;

/// The worker's stdout and stderr: logged a line at a time, the last lines kept.
pub(crate) struct Output {
    pub(crate) fd: OwnedFd,
    pub(crate) open: bool,
    partial: Vec<u8>,
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

    /// Reads what is there (blocking until something is, or the end) and logs whole lines.
    pub(crate) fn read(&mut self, label: &Label) {
        let mut chunk = [0u8; 8192];
        // SAFETY: the descriptor is owned by `self`; `chunk` is valid for its length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
        if n <= 0 {
            if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                self.open = false;
                if !self.partial.is_empty() {
                    let line =
                        String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned();
                    self.line(label, line);
                }
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
