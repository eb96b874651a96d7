//! `/hmac/batch` framing: any body is either accepted as frames that tile it
//! exactly, or refused with an error that names where it first goes wrong.

#![no_main]

use std::ops::Range;

use cryptoserver::batch::{encode_frames, parse_frames, FrameError, MAX_FRAMES};
use libfuzzer_sys::fuzz_target;

const HEADER_LEN: usize = 4;

fuzz_target!(|body: &[u8]| {
    match parse_frames(body) {
        Ok(frames) => check_accepted(body, &frames),
        Err(error) => check_refused(body, &error),
    }
    check_round_trip(body);
});

/// Each frame starts right after a 4-byte header holding its length, the frames
/// are in order and end exactly at the end of the body, and framing the messages
/// again gives back the same body.
fn check_accepted(body: &[u8], frames: &[Range<usize>]) {
    assert!(
        frames.len() <= MAX_FRAMES,
        "{} frames accepted",
        frames.len()
    );
    let mut offset = 0;
    for (index, frame) in frames.iter().enumerate() {
        assert_eq!(
            frame.start,
            offset + HEADER_LEN,
            "frame {index} does not follow its header"
        );
        assert!(
            frame.start <= frame.end && frame.end <= body.len(),
            "frame {index} = {frame:?} leaves the body"
        );
        let header: [u8; HEADER_LEN] = body[offset..frame.start].try_into().unwrap();
        assert_eq!(
            u32::from_be_bytes(header) as usize,
            frame.len(),
            "frame {index} disagrees with its header"
        );
        offset = frame.end;
    }
    assert_eq!(offset, body.len(), "the frames do not cover the body");
    let messages: Vec<&[u8]> = frames.iter().map(|frame| &body[frame.clone()]).collect();
    assert_eq!(
        encode_frames(&messages),
        body,
        "framing the messages again changes the body"
    );
}

/// The error's offset is where a frame header starts, what it reports about the
/// body there is true, and the body up to that offset frames correctly.
fn check_refused(body: &[u8], error: &FrameError) {
    let (offset, frames_before) = match *error {
        FrameError::Truncated {
            frame,
            offset,
            declared,
            available,
        } => {
            let header: [u8; HEADER_LEN] = body[offset..offset + HEADER_LEN].try_into().unwrap();
            assert_eq!(u64::from(u32::from_be_bytes(header)), declared, "{error}");
            assert_eq!(available, body.len() - offset - HEADER_LEN, "{error}");
            assert!(declared > available as u64, "{error}");
            (offset, Some(frame))
        }
        FrameError::TrailingBytes { offset, count } => {
            assert!((1..HEADER_LEN).contains(&count), "{error}");
            assert_eq!(offset + count, body.len(), "{error}");
            (offset, None)
        }
        FrameError::TooManyFrames { offset } => {
            assert!(body.len() - offset >= HEADER_LEN, "{error}");
            (offset, Some(MAX_FRAMES))
        }
    };
    let before = parse_frames(&body[..offset]).unwrap_or_else(|inner| {
        panic!("{error}, yet the body before that offset does not frame: {inner}")
    });
    if let Some(count) = frames_before {
        assert_eq!(before.len(), count, "{error}");
    }
    assert!(
        error.to_string().contains(&format!("byte offset {offset}")),
        "{error}"
    );
}

/// Any list of messages (here: the input split at newlines) frames into a body
/// that parses back into the same messages.
fn check_round_trip(input: &[u8]) {
    let messages: Vec<&[u8]> = input.split(|&byte| byte == b'\n').collect();
    let body = encode_frames(&messages);
    let frames = parse_frames(&body).expect("an encoded batch parses");
    let parsed: Vec<&[u8]> = frames.iter().map(|frame| &body[frame.clone()]).collect();
    assert_eq!(parsed, messages);
}
