//! The `/hmac/batch` body: frames of a big-endian u32 length followed by that many
//! message bytes. The whole body is parsed before anything is computed, so a
//! malformed batch costs no key reads.

use std::fmt;
use std::ops::Range;

/// Most frames one batch may hold.
pub const MAX_FRAMES: usize = 65_536;

const HEADER_LEN: usize = 4;

/// What is wrong with a batch body, with the byte offset where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A frame's length runs past the end of the body.
    Truncated {
        frame: usize,
        offset: usize,
        declared: u64,
        available: usize,
    },
    /// Fewer than 4 bytes left where a frame header should start.
    TrailingBytes {
        offset: usize,
        count: usize,
    },
    TooManyFrames {
        offset: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Truncated { frame, offset, declared, available } => write!(
                f,
                "frame {frame} at byte offset {offset} declares {declared} bytes but only {available} follow"
            ),
            FrameError::TrailingBytes { offset, count } => write!(
                f,
                "{count} trailing bytes at byte offset {offset}: a frame starts with a 4-byte big-endian length"
            ),
            FrameError::TooManyFrames { offset } => {
                write!(f, "more than {MAX_FRAMES} frames (frame {MAX_FRAMES} starts at byte offset {offset})")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// The byte ranges of the messages in `body`, in order.
pub fn parse_frames(body: &[u8]) -> Result<Vec<Range<usize>>, FrameError> {
    let mut frames = Vec::new();
    let mut offset = 0;
    while offset < body.len() {
        let rest = &body[offset..];
        let Some(header) = rest.first_chunk::<HEADER_LEN>() else {
            return Err(FrameError::TrailingBytes {
                offset,
                count: rest.len(),
            });
        };
        if frames.len() == MAX_FRAMES {
            return Err(FrameError::TooManyFrames { offset });
        }
        let declared = u32::from_be_bytes(*header);
        let start = offset + HEADER_LEN;
        let available = body.len() - start;
        if declared as usize > available {
            return Err(FrameError::Truncated {
                frame: frames.len(),
                offset,
                declared: declared.into(),
                available,
            });
        }
        let end = start + declared as usize;
        frames.push(start..end);
        offset = end;
    }
    Ok(frames)
}

/// Frames `messages` as `/hmac/batch` expects them (for clients, tests and benchmarks).
pub fn encode_frames<M: AsRef<[u8]>>(messages: &[M]) -> Vec<u8> {
    let mut body = Vec::with_capacity(messages.iter().map(|m| HEADER_LEN + m.as_ref().len()).sum());
    for message in messages {
        let message = message.as_ref();
        let length = u32::try_from(message.len()).expect("a frame holds at most 4 GiB");
        body.extend_from_slice(&length.to_be_bytes());
        body.extend_from_slice(message);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages<'a>(body: &'a [u8], frames: &[Range<usize>]) -> Vec<&'a [u8]> {
        frames.iter().map(|range| &body[range.clone()]).collect()
    }

    #[test]
    fn round_trip() {
        let input: Vec<&[u8]> = vec![b"hello world", b"", b"apples and pears"];
        let body = encode_frames(&input);
        assert_eq!(messages(&body, &parse_frames(&body).unwrap()), input);
        assert_eq!(parse_frames(&[]).unwrap(), Vec::<Range<usize>>::new());
    }

    #[test]
    fn truncated_frame_names_its_offset() {
        let mut body = encode_frames(&[b"abc"]);
        body.extend_from_slice(&[0, 0, 0, 9, b'x']);
        assert_eq!(
            parse_frames(&body),
            Err(FrameError::Truncated {
                frame: 1,
                offset: 7,
                declared: 9,
                available: 1
            })
        );
        assert!(parse_frames(&body)
            .unwrap_err()
            .to_string()
            .contains("byte offset 7"));
    }

    #[test]
    fn trailing_bytes_name_their_offset() {
        let mut body = encode_frames(&[b"abc"]);
        body.extend_from_slice(&[0, 0]);
        assert_eq!(
            parse_frames(&body),
            Err(FrameError::TrailingBytes {
                offset: 7,
                count: 2
            })
        );
    }

    #[test]
    fn frame_count_is_bounded() {
        let empty: Vec<&[u8]> = vec![b""; MAX_FRAMES];
        assert_eq!(
            parse_frames(&encode_frames(&empty)).unwrap().len(),
            MAX_FRAMES
        );
        let too_many: Vec<&[u8]> = vec![b""; MAX_FRAMES + 1];
        assert_eq!(
            parse_frames(&encode_frames(&too_many)),
            Err(FrameError::TooManyFrames {
                offset: 4 * MAX_FRAMES
            })
        );
    }

    #[test]
    fn huge_declared_length_does_not_overflow() {
        assert!(matches!(
            parse_frames(&[0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::Truncated { .. })
        ));
    }
}
