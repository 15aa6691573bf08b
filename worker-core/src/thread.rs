//! A worker's compute thread and the bounded queue that feeds it.

use crate::AdmitError;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;

/// What a worker thread receives: work, or the order to stop.
pub enum Inbox<T> {
    Work(T),
    Shutdown,
}

/// A compute thread fed by a bounded queue. Dropping the handle asks the thread to stop
/// (after what is queued before the order) and joins it.
pub struct WorkerThread<T: Send + 'static> {
    tx: SyncSender<Inbox<T>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> WorkerThread<T> {
    /// Starts `run` on a thread called `name`, reading a queue of at most `capacity` items.
    pub fn start(
        name: String,
        capacity: usize,
        run: impl FnOnce(Receiver<Inbox<T>>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(rx))?;
        Ok(WorkerThread {
            tx,
            thread: Some(thread),
        })
    }

    /// Queues `item` without waiting: a full queue is [`AdmitError::Busy`], a stopped
    /// thread [`AdmitError::Stopped`]; the item comes back with the error.
    pub fn try_send(&self, item: T) -> Result<(), (AdmitError, T)> {
        match self.tx.try_send(Inbox::Work(item)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(Inbox::Work(t))) => Err((AdmitError::Busy, t)),
            Err(TrySendError::Disconnected(Inbox::Work(t))) => Err((AdmitError::Stopped, t)),
            Err(_) => unreachable!("only work items are sent here"),
        }
    }

    /// A sender that waits for room (for traffic that must not be dropped, such as the KV
    /// layers of a sequence this worker already admitted).
    pub fn sender(&self) -> SyncSender<Inbox<T>> {
        self.tx.clone()
    }

    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl<T: Send + 'static> Drop for WorkerThread<T> {
    fn drop(&mut self) {
        let _ = self.tx.send(Inbox::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_full_queue_is_busy_and_drop_stops_and_joins_the_thread() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let s = Arc::clone(&seen);
        let w = WorkerThread::start("test-worker".into(), 2, move |rx| {
            go_rx.recv().unwrap();
            for m in rx {
                match m {
                    Inbox::Work(x) => s.lock().unwrap().push(x),
                    Inbox::Shutdown => {
                        s.lock().unwrap().push(-1);
                        return;
                    }
                }
            }
        })
        .unwrap();
        w.try_send(1).unwrap();
        w.try_send(2).unwrap();
        let (e, back) = w.try_send(3).unwrap_err();
        assert_eq!((e, back), (AdmitError::Busy, 3));
        assert!(w.is_alive());
        go_tx.send(()).unwrap();
        drop(w);
        assert_eq!(*seen.lock().unwrap(), vec![1, 2, -1]);
    }

    #[test]
    fn a_stopped_thread_refuses_work() {
        let w = WorkerThread::<u32>::start("test-stopped".into(), 4, |_rx| {}).unwrap();
        while w.is_alive() {
            std::thread::yield_now();
        }
        assert_eq!(w.try_send(7).unwrap_err(), (AdmitError::Stopped, 7));
    }
}
