//! Burned-in subtitles: one `textoverlay` that shows each cue in its time
//! window, so a film with a thousand cues costs one element, not a
//! thousand. Parsing SRT lives with the API ([`reelmesh_proto::srt`]) so
//! the gateway can refuse a bad file at submit.

use std::sync::atomic::{AtomicUsize, Ordering};

use gst::prelude::*;
use gstreamer as gst;

pub use reelmesh_proto::srt::{Cue, SrtError, parse_srt};

use crate::media::MediaError;
use crate::media::elements::static_pad;
use crate::media::overlay::{TextOverlay, styled_text};

/// Index of the cue showing at `seconds`, if any (cues sorted by start).
fn cue_at(cues: &[Cue], seconds: f64) -> Option<usize> {
    let after = cues.partition_point(|cue| cue.start <= seconds);
    (0..after).rev().find(|i| seconds < cues[*i].end)
}

/// Stands for "no cue" in the atomic that remembers what is shown.
const NO_CUE: usize = usize::MAX;

/// A `textoverlay` styled like `style` (its text and window are unused)
/// that shows whichever cue covers each frame's time.
pub(crate) fn subtitle_element(
    style: &TextOverlay,
    cues: Vec<Cue>,
) -> Result<gst::Element, MediaError> {
    let element = styled_text(style)?;
    element.set_property("silent", true);
    let weak = element.downgrade();
    let showing = AtomicUsize::new(NO_CUE);
    static_pad(&element, "video_sink")?.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let pts = info.buffer().and_then(|buffer| buffer.pts());
        if let (Some(element), Some(pts)) = (weak.upgrade(), pts) {
            let index = cue_at(&cues, pts.nseconds() as f64 / 1e9);
            // Only touch the element when the cue changes: setting the
            // text makes textoverlay lay it out again.
            if showing.swap(index.unwrap_or(NO_CUE), Ordering::Relaxed) != index.unwrap_or(NO_CUE) {
                match index.map(|i| &cues[i]) {
                    Some(cue) => {
                        element.set_property(
                            "text",
                            gst::glib::markup_escape_text(&cue.text).to_string(),
                        );
                        element.set_property("silent", false);
                    }
                    None => element.set_property("silent", true),
                }
            }
        }
        gst::PadProbeReturn::Ok
    });
    Ok(element)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str =
        "1\n00:00:01,000 --> 00:00:02,500\nHello\n\n2\n00:00:03,000 --> 00:00:04,000\nBye\n";

    #[test]
    fn finds_the_cue_covering_a_time() {
        let cues = parse_srt(SAMPLE).expect("parse");
        assert_eq!(cue_at(&cues, 0.5), None);
        assert_eq!(cue_at(&cues, 1.0), Some(0));
        assert_eq!(cue_at(&cues, 2.7), None);
        assert_eq!(cue_at(&cues, 3.9), Some(1));
        assert_eq!(cue_at(&cues, 4.0), None);
    }
}
