//! The actions a browser sent that its session has not handled yet.
//!
//! A bounded queue between the session's reader task and its serving task.
//! Both run on the session's shard, so it needs no lock and no shared
//! allocation: an idle session holds an empty queue and one waker, where a
//! cross-thread channel held a locked state and a registered receive hook
//! for as long as it waited.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

use sluice_protocol::browser::BrowserAction;

pub struct Actions {
    inner: RefCell<Inner>,
}

struct Inner {
    queue: VecDeque<BrowserAction>,
    cap: usize,
    waiting: Option<Waker>,
    /// The reader is gone: no action will follow those queued.
    closed: bool,
}

/// The queue already holds its cap of actions.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl Actions {
    pub fn new(cap: usize) -> Rc<Actions> {
        Rc::new(Actions {
            inner: RefCell::new(Inner {
                queue: VecDeque::new(),
                cap: cap.max(1),
                waiting: None,
                closed: false,
            }),
        })
    }

    pub fn try_push(&self, action: BrowserAction) -> Result<(), Full> {
        let mut g = self.inner.borrow_mut();
        if g.queue.len() >= g.cap {
            return Err(Full);
        }
        g.queue.push_back(action);
        if let Some(w) = g.waiting.take() {
            w.wake();
        }
        Ok(())
    }

    /// The next action, in order; `None` once the reader has closed the
    /// queue and every action before that was taken.
    pub async fn next(&self) -> Option<BrowserAction> {
        poll_fn(|cx| {
            let mut g = self.inner.borrow_mut();
            if let Some(a) = g.queue.pop_front() {
                if g.queue.is_empty() {
                    // Actions are rare: an idle session keeps no queue.
                    g.queue = VecDeque::new();
                }
                return Poll::Ready(Some(a));
            }
            if g.closed {
                return Poll::Ready(None);
            }
            g.waiting = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Called once by the reader on its way out, whatever ends it.
    pub fn close(&self) {
        let mut g = self.inner.borrow_mut();
        g.closed = true;
        if let Some(w) = g.waiting.take() {
            w.wake();
        }
    }
}

/// Closes the queue when the reader's task ends, on every path.
pub struct Closer(pub Rc<Actions>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_io::runtime;

    #[test]
    fn actions_arrive_in_order_are_bounded_and_end_after_close() {
        runtime().block_on(async {
            let q = Actions::new(2);
            q.try_push(BrowserAction::List).unwrap();
            q.try_push(BrowserAction::Subscribe {
                dataset: "d".into(),
            })
            .unwrap();
            assert_eq!(q.try_push(BrowserAction::List), Err(Full));
            assert!(matches!(q.next().await, Some(BrowserAction::List)));
            drop(Closer(q.clone()));
            // What was queued before the close is still handed out.
            assert!(matches!(
                q.next().await,
                Some(BrowserAction::Subscribe { .. })
            ));
            assert!(q.next().await.is_none());
        });
    }

    #[test]
    fn a_waiting_server_is_woken_by_a_push_and_by_the_close() {
        runtime().block_on(async {
            let q = Actions::new(4);
            let q2 = q.clone();
            let waiter =
                monoio::spawn(
                    async move { (q2.next().await.is_some(), q2.next().await.is_none()) },
                );
            monoio::time::sleep(std::time::Duration::from_millis(5)).await;
            q.try_push(BrowserAction::List).unwrap();
            monoio::time::sleep(std::time::Duration::from_millis(5)).await;
            q.close();
            assert_eq!(waiter.await, (true, true));
        });
    }
}
