//! A cancellation token shared by the builder, the sandbox and the fetcher.
//!
//! Tokens form a tree: [`Cancel::child`] makes a token that fires when its parent fires (or
//! when it is cancelled itself), so one build can stop all its stages when one of them fails
//! without cancelling whoever handed it the parent token.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    cond: Condvar,
}

#[derive(Debug, Default)]
struct State {
    cancelled: bool,
    children: Vec<Weak<Inner>>,
}

#[derive(Debug, Clone, Default)]
pub struct Cancel {
    inner: Arc<Inner>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cancel(&self) {
        let children = {
            let mut state = self.lock();
            if state.cancelled {
                return;
            }
            state.cancelled = true;
            std::mem::take(&mut state.children)
        };
        self.cond.notify_all();
        for child in children.iter().filter_map(Weak::upgrade) {
            child.cancel();
        }
    }
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// A token that is cancelled when this one is (already cancelled if this one is), and
    /// that can be cancelled on its own without touching this one.
    pub fn child(&self) -> Cancel {
        let child = Cancel::new();
        let mut state = self.inner.lock();
        if state.cancelled {
            drop(state);
            child.cancel();
        } else {
            state.children.retain(|c| c.strong_count() > 0);
            state.children.push(Arc::downgrade(&child.inner));
        }
        child
    }

    pub fn cancel(&self) {
        self.inner.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.lock().cancelled
    }

    /// Waits up to `timeout`; true if cancelled.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let guard = self.inner.lock();
        let (guard, _) = self
            .inner
            .cond
            .wait_timeout_while(guard, timeout, |s| !s.cancelled)
            .unwrap_or_else(|p| p.into_inner());
        guard.cancelled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_wakes_waiters() {
        let c = Cancel::new();
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.wait_timeout(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        c.cancel();
        assert!(t.join().unwrap());
        assert!(c.is_cancelled());
    }

    #[test]
    fn children_follow_their_parent_but_not_the_other_way() {
        let parent = Cancel::new();
        let child = parent.child();
        let grandchild = child.child();
        let sibling = parent.child();
        sibling.cancel();
        assert!(!parent.is_cancelled(), "a child's cancel must not reach its parent");
        assert!(!child.is_cancelled());
        let waiter = {
            let g = grandchild.clone();
            std::thread::spawn(move || g.wait_timeout(Duration::from_secs(10)))
        };
        parent.cancel();
        assert!(child.is_cancelled());
        assert!(waiter.join().unwrap(), "a waiter on a grandchild is woken");
        assert!(
            parent.child().is_cancelled(),
            "a child of a cancelled token starts cancelled"
        );
    }
}
