//! The whole distribution handshake (docs/protocol.md §3), followed in both directions
//! as a pure state machine over byte chunks split anywhere. distgate is a transparent
//! middle: it sees every frame before passing it on, and each side speaks only in
//! answer to what distgate has already passed, so a byte from the side whose turn it
//! is not is a violation, not a race.
//!
//! ```text
//! caller (A)                         node (B)
//! send_name  'N' / 'n'        ──▶
//!                             ◀──    status 's' ok | ok_simultaneous | named:… | alive | nok | not_allowed
//! status reply 's' true|false ──▶    (only after alive)
//!                             ◀──    challenge 'N' / 'n'
//! complement 'c'              ──▶    (only after an old 'n' send_name and an 'N' challenge)
//! challenge reply 'r'         ──▶
//!                             ◀──    challenge ack 'a'  → authenticated
//! ```
//!
//! The link is *authenticated* once the node has sent its challenge ack: the node sends
//! one only to a caller whose reply proved it knows the cookie. distgate never sees the
//! cookie; it only sees that the node accepted.

use std::fmt;

use super::{Caller, MAX_SEND_NAME, parse_send_name};

/// Largest handshake frame payload accepted from either side (a challenge carries a
/// name like a `send_name` does).
pub const MAX_FRAME: usize = MAX_SEND_NAME;

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// From the caller (the initiator, the peer that connected) to the node.
    Caller,
    /// From the node (the acceptor) to the caller.
    Node,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Caller => "caller",
            Side::Node => "node",
        })
    }
}

/// What the bytes so far amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The handshake goes on.
    Pending,
    /// The node sent its challenge ack: the link is authenticated, and every byte after
    /// the ack (in this chunk and later) is link traffic, not looked at.
    Authenticated,
    /// The node refused the caller with this status (`nok`, `not_allowed`); it closes.
    Refused(String),
}

/// Bytes that no OTP node sends at this point of a handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A side spoke when it was the other's turn.
    #[error("the {0} sent bytes out of turn")]
    OutOfTurn(Side),
    /// A frame longer than any handshake frame.
    #[error("a {length}-byte frame from the {side}, longer than any handshake frame")]
    TooLong {
        /// Who sent it.
        side: Side,
        /// The length it announced.
        length: usize,
    },
    /// A frame that is not the one expected, or does not parse as it.
    #[error("the {side} sent {got} where a {expected} was due")]
    Unexpected {
        /// Who sent it.
        side: Side,
        /// What was due.
        expected: &'static str,
        /// What came, in a bounded description.
        got: &'static str,
    },
}

impl Violation {
    /// A bounded label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Violation::OutOfTurn(_) => "out_of_turn",
            Violation::TooLong { .. } => "too_long",
            Violation::Unexpected { .. } => "unexpected_frame",
        }
    }
}

/// Where the handshake stands: whose turn it is and what is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    SendName,
    Status,
    StatusReply,
    Challenge,
    /// The caller's complement (when allowed) or its challenge reply.
    Reply {
        complement: bool,
    },
    Ack,
    Up,
    Refused,
}

impl State {
    fn turn(self) -> Option<Side> {
        match self {
            State::SendName | State::StatusReply | State::Reply { .. } => Some(Side::Caller),
            State::Status | State::Challenge | State::Ack => Some(Side::Node),
            State::Up | State::Refused => None,
        }
    }
    /// What is due now, for messages.
    fn due(self) -> &'static str {
        match self {
            State::SendName => "send_name",
            State::Status => "status",
            State::StatusReply => "status reply",
            State::Challenge => "challenge",
            State::Reply { .. } => "challenge reply",
            State::Ack => "challenge ack",
            State::Up | State::Refused => "nothing",
        }
    }
}

/// One direction's frame being put together: the `u16` length, then the payload.
#[derive(Debug, Default)]
struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    /// Takes bytes from `input` towards the next frame; the payload once it is whole.
    fn next(&mut self, side: Side, input: &mut &[u8]) -> Result<Option<Vec<u8>>, Violation> {
        if self.buf.len() < 2 {
            let take = (2 - self.buf.len()).min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            *input = &input[take..];
            if self.buf.len() < 2 {
                return Ok(None);
            }
        }
        let length = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
        if length > MAX_FRAME {
            return Err(Violation::TooLong { side, length });
        }
        let take = (2 + length - self.buf.len()).min(input.len());
        self.buf.extend_from_slice(&input[..take]);
        *input = &input[take..];
        if self.buf.len() < 2 + length {
            return Ok(None);
        }
        let payload = self.buf.split_off(2);
        self.buf.clear();
        Ok(Some(payload))
    }
}

/// A handshake followed from both sides.
#[derive(Debug)]
pub struct Handshake {
    state: State,
    caller_frames: Framer,
    node_frames: Framer,
    caller: Option<Caller>,
    old_send_name: bool,
    /// The name the node gave in its challenge (at most [`MAX_NODE_NAME`] bytes).
    node_name: Option<String>,
}

/// The longest node name kept from a challenge: OTP's own limit.
const MAX_NODE_NAME: usize = 255;

impl Default for Handshake {
    fn default() -> Self {
        Handshake {
            state: State::SendName,
            caller_frames: Framer::default(),
            node_frames: Framer::default(),
            caller: None,
            old_send_name: false,
            node_name: None,
        }
    }
}

impl Handshake {
    /// A handshake before its first byte.
    pub fn new() -> Handshake {
        Handshake::default()
    }

    /// Who the caller claims to be, once its `send_name` is whole (with DFLAG_NAME_ME,
    /// the name the node gave it in its `named:` status, once sent). A claim, not a
    /// proof: it is proven only once [`Handshake::is_authenticated`].
    pub fn caller(&self) -> Option<&Caller> {
        self.caller.as_ref()
    }

    /// The node's own name, while the caller owes the answer to its challenge. A
    /// caller that hangs up here has read the node's name and not liked it: OTP's
    /// caller checks that the node is the one it dialled, and a node known to peers by
    /// another host part fails that check in silence on both sides.
    pub fn awaiting_reply_from(&self) -> Option<&str> {
        match self.state {
            State::Reply { .. } => self.node_name.as_deref(),
            _ => None,
        }
    }

    /// Whether the node has sent its challenge ack.
    pub fn is_authenticated(&self) -> bool {
        self.state == State::Up
    }

    /// Whether either side has called the handshake off: the node with `nok` or
    /// `not_allowed`, or the caller answering `alive` with `false`.
    pub fn is_refused(&self) -> bool {
        self.state == State::Refused
    }

    /// Follows `bytes` that `side` sent. After [`Progress::Authenticated`] or
    /// [`Progress::Refused`] nothing more is looked at.
    pub fn feed(&mut self, side: Side, mut bytes: &[u8]) -> Result<Progress, Violation> {
        while !bytes.is_empty() {
            match self.state {
                State::Up => return Ok(Progress::Authenticated),
                State::Refused => return Ok(Progress::Pending),
                state if state.turn() != Some(side) => return Err(Violation::OutOfTurn(side)),
                _ => {}
            }
            let framer = match side {
                Side::Caller => &mut self.caller_frames,
                Side::Node => &mut self.node_frames,
            };
            let Some(frame) = framer.next(side, &mut bytes)? else {
                return Ok(Progress::Pending);
            };
            match self.step(side, &frame)? {
                Progress::Pending => {}
                done => return Ok(done),
            }
        }
        Ok(Progress::Pending)
    }

    /// One whole frame from the side whose turn it is.
    fn step(&mut self, side: Side, frame: &[u8]) -> Result<Progress, Violation> {
        let unexpected = |expected, got| Violation::Unexpected {
            side,
            expected,
            got,
        };
        match (self.state, frame.first()) {
            (State::SendName, Some(b'N' | b'n')) => {
                let caller = parse_send_name(frame)
                    .ok_or_else(|| unexpected("send_name", "a malformed send_name"))?;
                self.old_send_name = frame[0] == b'n';
                self.caller = Some(caller);
                self.state = State::Status;
            }
            (State::Status, Some(b's')) => return self.status(&frame[1..]),
            (State::StatusReply, Some(b's')) => match &frame[1..] {
                b"true" => self.state = State::Challenge,
                b"false" => self.state = State::Refused,
                _ => return Err(unexpected("status reply", "another status")),
            },
            (State::Challenge, Some(b'N')) if frame.len() >= 19 => {
                self.node_name = challenge_name(frame);
                self.state = State::Reply {
                    complement: self.old_send_name,
                };
            }
            (State::Challenge, Some(b'n')) if frame.len() >= 11 => {
                self.node_name = challenge_name(frame);
                self.state = State::Reply { complement: false };
            }
            (State::Reply { complement: true }, Some(b'c')) if frame.len() == 9 => {
                self.state = State::Reply { complement: false };
            }
            (State::Reply { .. }, Some(b'r')) if frame.len() == 21 => self.state = State::Ack,
            (State::Ack, Some(b'a')) if frame.len() == 17 => {
                self.state = State::Up;
                return Ok(Progress::Authenticated);
            }
            (state, first) => {
                let got = match first {
                    None => "an empty frame",
                    Some(_) => "another frame",
                };
                return Err(unexpected(state.due(), got));
            }
        }
        Ok(Progress::Pending)
    }

    /// The node's status.
    fn status(&mut self, text: &[u8]) -> Result<Progress, Violation> {
        match text {
            b"ok" | b"ok_simultaneous" => self.state = State::Challenge,
            b"alive" => self.state = State::StatusReply,
            b"nok" | b"not_allowed" => {
                self.state = State::Refused;
                return Ok(Progress::Refused(
                    String::from_utf8_lossy(text).into_owned(),
                ));
            }
            named if named.starts_with(b"named:") => {
                if let Some(name) = assigned_name(&named[6..])
                    && let Some(Caller::Node { name: claimed, .. }) = &mut self.caller
                {
                    *claimed = name;
                }
                self.state = State::Challenge;
            }
            _ => {
                return Err(Violation::Unexpected {
                    side: Side::Node,
                    expected: "status",
                    got: "an unknown status",
                });
            }
        }
        Ok(Progress::Pending)
    }
}

/// The name in a `named:` status: `u16` length, the name, `u32` creation.
fn assigned_name(rest: &[u8]) -> Option<String> {
    let len = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
    let name = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
    (!name.is_empty() && !name.chars().any(char::is_control)).then(|| name.to_owned())
}

/// The node's name in its challenge, if it is a plausible one.
fn challenge_name(frame: &[u8]) -> Option<String> {
    let name = super::parse_challenge(frame)?.name;
    let plausible =
        !name.is_empty() && name.len() <= MAX_NODE_NAME && !name.chars().any(char::is_control);
    plausible.then_some(name)
}

#[cfg(test)]
mod tests;
