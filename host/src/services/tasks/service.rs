//! [`Tasks`], the task runner as its users see it: start it on a host and a store, submit
//! tasks, list and inspect them, cancel and retry them, stop it. The work is `runner`'s.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::orphans::waiting_note;
use super::runner::{lock, now_ms, unavailable, Inner, State};
use super::settings::{ScheduleConfig, TaskSettings};
use super::store::TaskStore;
use super::task::{Inserted, NewTask, TaskFilter, TaskId, TaskPage, TaskRecord, TaskStatus};
use crate::types::call::{CallError, CallErrorKind};
use crate::Host;

/// The most tasks `host task` shows under one task.
const MAX_TREE: usize = 1000;

/// Runs a host's tasks. Cheap to clone; [`Tasks::stop`] ends it.
#[derive(Clone)]
pub struct Tasks {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks")
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

/// A task and the follow-ups under it, for `host task`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskTree {
    /// The task.
    pub task: TaskRecord,
    /// The tasks its call asked for, oldest first.
    pub children: Vec<TaskTree>,
}

impl Tasks {
    /// Starts running the tasks in `store` on `host`: tasks left running by an earlier host
    /// are queued again first; `schedules` are host.toml's.
    pub fn start(
        host: Host,
        store: Arc<dyn TaskStore>,
        settings: TaskSettings,
        schedules: Vec<ScheduleConfig>,
    ) -> Result<Tasks, CallError> {
        let recovered = store.recover(now_ms()).map_err(unavailable)?;
        if recovered.queued > 0 {
            tracing::warn!(
                "{} tasks were running when the host last stopped: queued again \
                 (the attempt counted)",
                recovered.queued
            );
        }
        if recovered.failed > 0 {
            tracing::error!(
                "{} tasks were running when the host last stopped, and have no attempts \
                 left: failed (see `host tasks --status failed`)",
                recovered.failed
            );
        }
        let inner = Arc::new(Inner {
            host,
            store,
            settings,
            state: Mutex::new(State {
                configured: Some(schedules),
                ..State::default()
            }),
            wake: Condvar::new(),
            run_clock: Default::default(),
            store_failing: std::sync::atomic::AtomicBool::new(false),
            ping: Mutex::new(None),
            live: Arc::default(),
        });
        // A shared store's notifications (another host queued a task) wake the dispatcher.
        let weak = Arc::downgrade(&inner);
        inner.store.set_waker(Arc::new(move || {
            if let Some(inner) = weak.upgrade() {
                inner.poke();
            }
        }));
        let threads = inner.settings.max_running.max(1);
        let (send, receive) = mpsc::sync_channel::<TaskRecord>(threads);
        let receive = Arc::new(Mutex::new(receive));
        for n in 0..threads {
            let (inner, receive) = (inner.clone(), receive.clone());
            std::thread::Builder::new()
                .name(format!("task-{n}"))
                .spawn(move || inner.work(&receive))
                .map_err(|err| thread_error(&err))?;
        }
        let dispatcher = inner.clone();
        std::thread::Builder::new()
            .name("tasks".into())
            .spawn(move || dispatcher.dispatch(send))
            .map_err(|err| thread_error(&err))?;
        Ok(Tasks { inner })
    }

    /// Submits a task. It is queued unless a task with its key is active (the answer names
    /// that task) or, with an `age`, its key succeeded within it (recorded as skipped).
    /// Refused with `busy` when its plugin has `max_queued_per_plugin` active tasks.
    pub fn submit(&self, task: NewTask) -> Result<Inserted, CallError> {
        self.inner.submit(task)
    }

    /// Tasks matching `filter`, newest first: one page of at most `filter.limit` and
    /// `list_page_max`, with the cursor to the next page if more match.
    pub fn list(&self, filter: &TaskFilter) -> Result<TaskPage, CallError> {
        let max = self.inner.settings.list_page_max.max(1);
        let page = match filter.limit {
            0 => max,
            n => n.min(max),
        };
        // One more than the page: whether there is a next one.
        let mut asked = filter.clone();
        asked.limit = page + 1;
        let mut tasks = self.inner.store.list(&asked).map_err(unavailable)?;
        let next = if tasks.len() > page {
            tasks.truncate(page);
            tasks.last().map(|t| t.id)
        } else {
            None
        };
        Ok(TaskPage { tasks, next })
    }

    /// What to tell whoever submits a task of `plugin` when the host does not serve it now
    /// (the task waits for it); `None` when it does.
    pub fn waiting_note(&self, plugin: &str) -> Option<String> {
        let served = self.inner.host.plugin_names().iter().any(|p| p == plugin);
        (!served).then(|| waiting_note(plugin, self.inner.settings.orphan_after))
    }

    /// Task `id` and the follow-ups under it (at most 1,000 of them).
    pub fn task(&self, id: TaskId) -> Result<TaskTree, CallError> {
        let store = &self.inner.store;
        let task = store
            .get(id)
            .map_err(unavailable)?
            .ok_or_else(|| no_task(id))?;
        let mut budget = MAX_TREE;
        self.tree(task, &mut budget)
    }

    fn tree(&self, task: TaskRecord, budget: &mut usize) -> Result<TaskTree, CallError> {
        let mut children = Vec::new();
        for child in self.inner.store.children(task.id).map_err(unavailable)? {
            if *budget == 0 {
                break;
            }
            *budget -= 1;
            children.push(self.tree(child, budget)?);
        }
        Ok(TaskTree { task, children })
    }

    /// Cancels task `id`: a queued one at once; a running one's call is told to cancel,
    /// and the task ends `cancelled` when it returns. Says what was done, in one line.
    pub fn cancel(&self, id: TaskId) -> Result<String, CallError> {
        let inner = &self.inner;
        let Some(was) = inner.store.get(id).map_err(unavailable)? else {
            return Err(no_task(id));
        };
        match inner.store.cancel(id, now_ms()).map_err(unavailable)? {
            None => Err(no_task(id)),
            Some(TaskStatus::Queued) => {
                inner.count(&was.plugin, -1);
                Ok(format!("cancelled task {id}"))
            }
            Some(TaskStatus::Running) => {
                let flag = {
                    let mut state = lock(&inner.state);
                    let flag = state.cancels.get(&id).cloned();
                    if flag.is_some() {
                        state.cancel_asked.insert(id);
                    }
                    flag
                };
                match flag {
                    Some(flag) => {
                        flag.store(true, Ordering::Relaxed);
                        Ok(format!("task {id} is running: its call was told to cancel"))
                    }
                    None => Err(CallError::new(
                        CallErrorKind::InvalidRequest,
                        format!("task {id} is running on another host; cancel it there"),
                    )),
                }
            }
            Some(status) => Err(CallError::new(
                CallErrorKind::InvalidRequest,
                format!("task {id} has ended ({status}); nothing to cancel"),
            )),
        }
    }

    /// Queues task `id` again, with its attempts reset, if it has ended. Says what was
    /// done, in one line.
    pub fn retry(&self, id: TaskId) -> Result<String, CallError> {
        let inner = &self.inner;
        let requeued = inner
            .store
            .requeue(id, now_ms())
            .map_err(|err| CallError::new(CallErrorKind::InvalidRequest, err.to_string()))?;
        match requeued {
            None => Err(no_task(id)),
            Some(status) if status.is_active() => Err(CallError::new(
                CallErrorKind::InvalidRequest,
                format!("task {id} is {status} already"),
            )),
            Some(status) => {
                if let Ok(Some(task)) = inner.store.get(id) {
                    inner.count(&task.plugin, 1);
                }
                inner.poke();
                Ok(format!("task {id} ({status}) queued again"))
            }
        }
    }

    /// Replaces host.toml's schedules (the configuration changed).
    pub fn set_schedules(&self, schedules: Vec<ScheduleConfig>) {
        lock(&self.inner.state).configured = Some(schedules);
        self.inner.poke();
    }

    /// Stops taking tasks, and waits up to `wait` for the calls running to end. Returns
    /// whether they all did; those still running are run again at the next start.
    pub fn stop(&self, wait: Duration) -> bool {
        let inner = &self.inner;
        let deadline = Instant::now() + wait;
        let mut state = lock(&inner.state);
        state.stopping = true;
        inner.wake.notify_all();
        while state.total > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = inner
                .wake
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

fn no_task(id: TaskId) -> CallError {
    CallError::new(CallErrorKind::InvalidRequest, format!("no task {id}"))
}

fn thread_error(err: &std::io::Error) -> CallError {
    CallError::new(
        CallErrorKind::Internal,
        format!("tasks: cannot start a thread: {err}"),
    )
}
