//! LISTEN/NOTIFY: a connection of this host's own listens on `host_tasks` and wakes the
//! dispatcher when another host (or this one) queues a task. It only wakes: a lost
//! notification costs at most the dispatcher's poll. A dropped connection is made again
//! with backoff, quietly (the heartbeat says when the database is down).

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_postgres::AsyncMessage;

use super::store::Waker;
use crate::services::postgres::Database;

const FIRST_DELAY: Duration = Duration::from_millis(100);
const LAST_DELAY: Duration = Duration::from_secs(5);

pub(super) async fn run(db: Database, waker: Arc<Mutex<Option<Waker>>>, notified: Arc<AtomicBool>) {
    let mut delay = FIRST_DELAY;
    loop {
        match db.dedicated("listen for new tasks").await {
            Ok((client, mut connection)) => {
                let listening = {
                    let listen = client.batch_execute("LISTEN host_tasks");
                    // The connection must be driven for the LISTEN to be answered.
                    let mut listen = std::pin::pin!(listen);
                    loop {
                        tokio::select! {
                            done = &mut listen => break done.is_ok(),
                            message = poll_fn(|cx| connection.poll_message(cx)) => {
                                if message.is_none() { break false; }
                            }
                        }
                    }
                };
                if listening {
                    delay = FIRST_DELAY;
                    // Tasks may have been queued while no one listened.
                    wake(&waker, &notified);
                    while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
                        match message {
                            Ok(AsyncMessage::Notification(_)) => wake(&waker, &notified),
                            Ok(_) => {}
                            Err(err) => {
                                tracing::debug!("listen for new tasks: {err}");
                                break;
                            }
                        }
                    }
                }
                drop(client);
            }
            Err(err) => tracing::debug!("{err}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(LAST_DELAY);
    }
}

fn wake(waker: &Mutex<Option<Waker>>, notified: &AtomicBool) {
    notified.store(true, Ordering::Release);
    let waker = waker.lock().unwrap_or_else(PoisonError::into_inner).clone();
    if let Some(waker) = waker {
        waker();
    }
}
