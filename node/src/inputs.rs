//! An actor's inputs, one bounded channel each. During barrier alignment
//! the actor stops reading the inputs whose barrier has arrived instead of
//! buffering what they send: their channels fill and backpressure reaches
//! exactly those upstream actors (through the gRPC stream's flow control
//! for a remote one), so alignment holds no more than the channels do.

use crate::message::Inbound;
use std::future::poll_fn;
use std::task::Poll;
use tokio::sync::mpsc;

/// The receiving ends of an actor's inputs, by input index.
pub struct Inputs {
    rx: Vec<mpsc::Receiver<Inbound>>,
    /// Where the next round-robin scan starts, so a busy input cannot
    /// starve the others.
    next: usize,
}

impl Inputs {
    /// Inputs over `rx`, one receiver per input index.
    pub fn new(rx: Vec<mpsc::Receiver<Inbound>>) -> Self {
        Self { rx, next: 0 }
    }

    /// The next message of any input `blocked` does not hold back
    /// (`blocked[i]`; an input past the end of `blocked` is not held).
    /// `None` once every input it may read is closed.
    pub async fn recv(&mut self, blocked: &[bool]) -> Option<Inbound> {
        poll_fn(|cx| {
            let n = self.rx.len();
            let mut waiting = false;
            for k in 0..n {
                let i = (self.next + k) % n;
                if blocked.get(i).copied().unwrap_or(false) {
                    waiting = true;
                    continue;
                }
                match self.rx[i].poll_recv(cx) {
                    Poll::Ready(Some(m)) => {
                        self.next = (i + 1) % n;
                        return Poll::Ready(Some(m));
                    }
                    Poll::Ready(None) => {}
                    Poll::Pending => waiting = true,
                }
            }
            if waiting {
                Poll::Pending
            } else {
                Poll::Ready(None)
            }
        })
        .await
    }
}

/// Creates the channels of an actor with `inputs` inputs, each holding up
/// to `capacity` messages.
pub fn channels(inputs: usize, capacity: usize) -> (Vec<mpsc::Sender<Inbound>>, Inputs) {
    let (tx, rx): (Vec<_>, Vec<_>) = (0..inputs.max(1))
        .map(|_| mpsc::channel::<Inbound>(capacity.max(1)))
        .unzip();
    (tx, Inputs::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use adclick_proto::dataflow::stream_message::Body;
    use adclick_proto::dataflow::Watermark;

    fn msg(input: u32, ts: i64) -> Inbound {
        Inbound {
            input,
            body: Body::Watermark(Watermark {
                timestamp_ms: ts,
                idle: false,
            }),
        }
    }

    fn ts(m: &Inbound) -> i64 {
        match &m.body {
            Body::Watermark(w) => w.timestamp_ms,
            _ => -1,
        }
    }

    #[tokio::test]
    async fn a_blocked_input_is_not_read_and_its_sender_feels_the_backpressure() {
        let (tx, mut inputs) = channels(2, 2);
        tx[0].send(msg(0, 1)).await.unwrap();
        tx[0].send(msg(0, 2)).await.unwrap();
        // Input 0 is full: its sender must wait, input 1's need not.
        assert!(tx[0].try_send(msg(0, 3)).is_err());
        tx[1].send(msg(1, 10)).await.unwrap();
        let blocked = [true, false];
        let got = inputs.recv(&blocked).await.unwrap();
        assert_eq!((got.input, ts(&got)), (1, 10));
        // Nothing else readable while input 0 is held back.
        let nothing =
            tokio::time::timeout(std::time::Duration::from_millis(50), inputs.recv(&blocked));
        assert!(nothing.await.is_err());
        assert!(tx[0].try_send(msg(0, 3)).is_err(), "still full");
        // Released: input 0's messages come, in order.
        assert_eq!(ts(&inputs.recv(&[]).await.unwrap()), 1);
        assert_eq!(ts(&inputs.recv(&[]).await.unwrap()), 2);
        assert!(tx[0].try_send(msg(0, 3)).is_ok());
    }

    #[tokio::test]
    async fn inputs_are_read_in_turn_and_end_when_all_close() {
        let (tx, mut inputs) = channels(2, 8);
        for t in 0..3 {
            tx[0].send(msg(0, t)).await.unwrap();
            tx[1].send(msg(1, 100 + t)).await.unwrap();
        }
        let mut order = Vec::new();
        for _ in 0..4 {
            order.push(inputs.recv(&[]).await.unwrap().input);
        }
        assert_eq!(
            order,
            vec![0, 1, 0, 1],
            "a busy input does not starve the other"
        );
        drop(tx);
        let mut rest = 0;
        while inputs.recv(&[]).await.is_some() {
            rest += 1;
        }
        assert_eq!(rest, 2);
    }
}
