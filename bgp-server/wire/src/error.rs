//! Decode errors that end a session, each with the NOTIFICATION to send.

use thiserror::Error;

use crate::Notification;

/// A message that must be answered with a NOTIFICATION and a session reset.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The marker is not all ones (1/1).
    #[error("message header: marker is not all ones (connection not synchronized)")]
    BadMarker,
    /// The length field is out of range for the type (1/2).
    #[error("message header: bad length {0}")]
    BadLength(u16),
    /// Unknown message type (1/3).
    #[error("message header: unknown message type {0}")]
    BadType(u8),
    /// An OPEN error (2/subcode), with its data.
    #[error("OPEN: {reason}")]
    Open {
        /// RFC 4271 §6.2 subcode.
        subcode: u8,
        /// Data for the NOTIFICATION.
        data: Vec<u8>,
        /// What was wrong.
        reason: String,
    },
    /// An UPDATE error that RFC 7606 says must reset the session (3/subcode).
    #[error("UPDATE: {reason}")]
    Update {
        /// RFC 4271 §6.3 subcode.
        subcode: u8,
        /// Data for the NOTIFICATION.
        data: Vec<u8>,
        /// What was wrong.
        reason: String,
    },
}

impl DecodeError {
    /// The NOTIFICATION to send before closing the connection.
    pub fn notification(&self) -> Notification {
        match self {
            DecodeError::BadMarker => Notification::new(1, 1, Vec::new()),
            DecodeError::BadLength(len) => Notification::new(1, 2, len.to_be_bytes().to_vec()),
            DecodeError::BadType(t) => Notification::new(1, 3, vec![*t]),
            DecodeError::Open { subcode, data, .. } => Notification::new(2, *subcode, data.clone()),
            DecodeError::Update { subcode, data, .. } => {
                Notification::new(3, *subcode, data.clone())
            }
        }
    }

    pub(crate) fn open(subcode: u8, data: Vec<u8>, reason: impl Into<String>) -> Self {
        DecodeError::Open {
            subcode,
            data,
            reason: reason.into(),
        }
    }

    pub(crate) fn update(subcode: u8, reason: impl Into<String>) -> Self {
        DecodeError::Update {
            subcode,
            data: Vec::new(),
            reason: reason.into(),
        }
    }
}
