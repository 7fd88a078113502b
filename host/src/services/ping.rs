//! [`Ping`]: a question to a loop (a runtime, a thread) that answers it when it turns, for
//! a liveness probe, waited for with a bound. At most one question is in flight: an answer
//! still due at the bound is waited for again at the next look, so a wedged loop is never
//! sent more.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::time::Duration;

/// The question in flight, if any.
#[derive(Debug, Default)]
pub(crate) struct Ping {
    pending: Option<Receiver<()>>,
}

impl Ping {
    /// Whether the loop answered within `within`: the question still in flight, else a new
    /// one, handed to `ask` (which returns false where the loop cannot be asked: gone).
    pub(crate) fn answered(
        &mut self,
        within: Duration,
        ask: impl FnOnce(SyncSender<()>) -> bool,
    ) -> bool {
        let answer = match self.pending.take() {
            Some(answer) => answer,
            None => {
                let (send, answer) = mpsc::sync_channel(1);
                if !ask(send) {
                    return false;
                }
                answer
            }
        };
        match answer.recv_timeout(within) {
            Ok(()) => true,
            Err(RecvTimeoutError::Timeout) => {
                self.pending = Some(answer);
                false
            }
            Err(RecvTimeoutError::Disconnected) => false,
        }
    }

    /// Whether a question waits for its answer.
    pub(crate) fn in_flight(&self) -> bool {
        self.pending.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unanswered_question_is_waited_for_again_not_asked_twice() {
        let mut ping = Ping::default();
        let mut held = None;
        assert!(!ping.answered(Duration::from_millis(1), |send| {
            held = Some(send);
            true
        }));
        assert!(ping.in_flight());
        assert!(!ping.answered(Duration::from_millis(1), |_| panic!("asked twice")));
        held.take().map(|send| send.send(()));
        assert!(ping.answered(Duration::from_millis(1), |_| panic!("asked twice")));
        // Answered: the next look asks anew; a loop that cannot be asked never answers.
        assert!(ping.answered(Duration::from_millis(1), |send| send.send(()).is_ok()));
        assert!(!ping.answered(Duration::from_millis(1), |_| false));
        // A loop gone with the question (its sender dropped) does not answer.
        assert!(!ping.answered(Duration::from_millis(1), |send| {
            drop(send);
            true
        }));
        assert!(!ping.in_flight());
    }
}
