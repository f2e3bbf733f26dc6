//! librdkafka's main queue (delivery reports, logs, client errors), served on the send loop's
//! own thread instead of by a polling thread of its own.
//!
//! Why (issue #16): with rdkafka's `ThreadedProducer`, a second thread polled the queue, ran
//! the delivery callbacks and freed every delivered message (its copy of the value, its header
//! list and each header), all allocated on the send loop's thread. glibc's malloc makes such
//! frees slow (the freeing thread's cache fills, the rest goes back to the other thread's arena
//! under its lock, whose cache in turn runs empty), and the wake-ups of that thread cost
//! context switches. Serving the queue where the messages were made keeps both on one thread.
//!
//! librdkafka calls [`EventQueue`]'s callback from its own threads when an event lands in the
//! empty queue; the callback only wakes the send loop (it must not call librdkafka), which then
//! polls. This is the crate's one `unsafe` module: three calls of librdkafka's C API that the
//! `rdkafka` crate does not wrap.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::Arc;

use rdkafka::bindings as rd;
use rdkafka::client::Client;
use rdkafka::ClientContext;
use tokio::sync::Notify;

/// A handle to a client's main queue that wakes [`EventQueue::ready`] whenever an event lands
/// in it while it was empty.
pub(super) struct EventQueue {
    queue: NonNull<rd::rd_kafka_queue_t>,
    /// What the callback wakes; the callback's opaque points into it, so it lives until the
    /// callback is switched off (in `drop`).
    ready: Arc<Notify>,
}

// SAFETY: librdkafka's queue API is thread-safe (every call takes the queue's lock), and the
// handle is only destroyed in `drop`.
unsafe impl Send for EventQueue {}
unsafe impl Sync for EventQueue {}

/// Called by librdkafka, with the queue's lock held, when an event lands in the empty queue.
unsafe extern "C" fn on_first_event(_client: *mut rd::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the `Notify` inside `EventQueue::ready`, which outlives the callback:
    // `drop` switches the callback off (under the same lock) before it lets go of the `Arc`.
    let ready = unsafe { &*(opaque as *const Notify) };
    // Stores a permit when the loop is not waiting yet: a wake-up is never lost.
    ready.notify_one();
}

impl EventQueue {
    pub(super) fn new<C: ClientContext>(client: &Client<C>) -> Self {
        let ready = Arc::new(Notify::new());
        // SAFETY: `native_ptr` is the live client `client` owns; `rd_kafka_queue_get_main`
        // returns a new reference to its main queue (never null for a live client), released
        // in `drop`. The opaque stays valid while the callback is on (see `on_first_event`).
        let queue = unsafe {
            let queue = NonNull::new(rd::rd_kafka_queue_get_main(client.native_ptr()))
                .expect("librdkafka returned no main queue for a live client");
            rd::rd_kafka_queue_cb_event_enable(
                queue.as_ptr(),
                Some(on_first_event),
                Arc::as_ptr(&ready) as *mut c_void,
            );
            queue
        };
        // Events queued before the callback was on would wake nobody: look once.
        ready.notify_one();
        EventQueue { queue, ready }
    }

    /// Events waiting in the queue.
    pub(super) fn len(&self) -> usize {
        // SAFETY: the handle is live until `drop`.
        unsafe { rd::rd_kafka_queue_length(self.queue.as_ptr()) }
    }

    /// Resolves once events are waiting: at once if some are (or landed since the last wait),
    /// else when the next one lands.
    pub(super) async fn ready(&self) {
        let notified = self.ready.notified();
        tokio::pin!(notified);
        // Registered before the look, so an event landing between the look and the wait
        // wakes it.
        notified.as_mut().enable();
        if self.len() > 0 {
            return;
        }
        notified.await;
    }
}

impl Drop for EventQueue {
    fn drop(&mut self) {
        // SAFETY: switching the callback off takes the queue's lock, under which librdkafka
        // calls it: once this returns, no call is running or will run, and `ready` may go.
        // Then the reference taken in `new` is released.
        unsafe {
            rd::rd_kafka_queue_cb_event_enable(self.queue.as_ptr(), None, std::ptr::null_mut());
            rd::rd_kafka_queue_destroy(self.queue.as_ptr());
        }
    }
}
