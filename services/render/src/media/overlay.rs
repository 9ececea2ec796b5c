//! Text burned into video: one `textoverlay` element per overlay, chained in
//! the video branch before the encoder.
//!
//! textoverlay has no notion of a time window, so a pad probe on each
//! element's video input turns it silent outside [start, end) by the frame's
//! timestamp. It also has no box colour: a box is drawn with its shaded
//! background, whose darkness follows the box colour's alpha.

use gst::prelude::*;
use gstreamer as gst;

use crate::media::MediaError;
use crate::media::elements::{make, static_pad};

#[derive(Debug, Clone, PartialEq)]
pub struct TextOverlay {
    pub text: String,
    /// Pango font family, e.g. "Sans".
    pub font: String,
    pub size_px: u32,
    pub color_rgba: u32,
    pub position: Position,
    pub start_seconds: f64,
    pub end_seconds: Option<f64>,
    pub box_rgba: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Position {
    TopLeft,
    TopCenter,
    TopRight,
    CenterLeft,
    Center,
    CenterRight,
    BottomLeft,
    BottomCenter,
    BottomRight,
    /// Fractions (0..1) of the frame; the text is kept inside it.
    Xy {
        x: f64,
        y: f64,
    },
}

/// The elements drawing `overlays`, in order (empty when there are none).
pub fn overlay_chain(overlays: &[TextOverlay]) -> Result<Vec<gst::Element>, MediaError> {
    overlays.iter().map(text_element).collect()
}

fn text_element(overlay: &TextOverlay) -> Result<gst::Element, MediaError> {
    let element = styled_text(overlay)?;
    show_only_between(&element, overlay.start_seconds, overlay.end_seconds)?;
    Ok(element)
}

/// A `textoverlay` drawing `overlay`'s text in its style, always shown.
pub(crate) fn styled_text(overlay: &TextOverlay) -> Result<gst::Element, MediaError> {
    let (halign, valign) = alignment(overlay.position);
    let mut builder = gst::ElementFactory::make("textoverlay")
        // textoverlay reads Pango markup: a client's "&" or "<" would make
        // the markup invalid and draw nothing, so the text is escaped.
        .property(
            "text",
            gst::glib::markup_escape_text(&overlay.text).to_string(),
        )
        .property(
            "font-desc",
            format!("{} {}px", overlay.font, overlay.size_px),
        )
        // Our size is in pixels of the output frame, not relative to it.
        .property("auto-resize", false)
        .property("color", argb(overlay.color_rgba))
        .property_from_str("halignment", halign)
        .property_from_str("valignment", valign)
        .property("shaded-background", overlay.box_rgba.is_some());
    if let Position::Xy { x, y } = overlay.position {
        builder = builder.property("xpos", x).property("ypos", y);
    }
    if let Some(box_rgba) = overlay.box_rgba {
        builder = builder.property("shading-value", box_rgba & 0xff);
    }
    make(builder)
}

fn alignment(position: Position) -> (&'static str, &'static str) {
    match position {
        Position::TopLeft => ("left", "top"),
        Position::TopCenter => ("center", "top"),
        Position::TopRight => ("right", "top"),
        Position::CenterLeft => ("left", "center"),
        Position::Center => ("center", "center"),
        Position::CenterRight => ("right", "center"),
        Position::BottomLeft => ("left", "bottom"),
        Position::BottomCenter => ("center", "bottom"),
        Position::BottomRight => ("right", "bottom"),
        Position::Xy { .. } => ("position", "position"),
    }
}

/// textoverlay wants 0xAARRGGBB; the API speaks 0xRRGGBBAA.
fn argb(rgba: u32) -> u32 {
    rgba.rotate_right(8)
}

/// Silences the element for frames outside [start, end).
fn show_only_between(
    element: &gst::Element,
    start: f64,
    end: Option<f64>,
) -> Result<(), MediaError> {
    let visible = move |seconds: f64| seconds >= start && end.is_none_or(|end| seconds < end);
    element.set_property("silent", !visible(0.0));
    let weak = element.downgrade();
    static_pad(element, "video_sink")?.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let pts = info.buffer().and_then(|buffer| buffer.pts());
        if let (Some(element), Some(pts)) = (weak.upgrade(), pts) {
            let silent = !visible(pts.nseconds() as f64 / 1e9);
            if element.property::<bool>("silent") != silent {
                element.set_property("silent", silent);
            }
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::media::frames::{RgbFrame, rgb_frame_at};
    use crate::media::pipeline::{TranscodeRequest, transcode_mp4};
    use crate::media::testsrc::{TestClip, write_test_clip};

    #[test]
    fn colours_are_reordered_for_textoverlay() {
        assert_eq!(argb(0x11223344), 0x44112233);
        assert_eq!(argb(0xffffffff), 0xffffffff);
    }

    /// Mean absolute difference of two frames over rows and columns.
    fn difference(
        a: &RgbFrame,
        b: &RgbFrame,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) -> f64 {
        let mut total = 0u64;
        for row in rows.clone() {
            for col in cols.clone() {
                for channel in 0..3 {
                    let i = (row * a.width + col) * 3 + channel;
                    total += u64::from(a.data[i].abs_diff(b.data[i]));
                }
            }
        }
        total as f64 / (rows.len() * cols.len() * 3) as f64
    }

    fn render(input: &Path, output: &Path, overlays: &[TextOverlay]) {
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let request = TranscodeRequest {
            overlays,
            ..TranscodeRequest::new(input, output)
        };
        transcode_mp4(&request, &cancel, Duration::from_secs(20), &mut |_| {}).expect("render");
    }

    #[test]
    fn text_is_drawn_only_inside_its_window() {
        let dir = tempfile::tempdir().expect("dir");
        let input = dir.path().join("in.mp4");
        let clip = TestClip {
            seconds: 3.0,
            width: 320,
            height: 240,
            fps: 30,
            audio: false,
        };
        write_test_clip(&clip, &input).expect("clip");
        let overlay = TextOverlay {
            // Markup characters must be drawn, not parsed.
            text: "M&<M".into(),
            font: "Sans".into(),
            size_px: 80,
            color_rgba: 0xffff_ffff,
            position: Position::BottomCenter,
            start_seconds: 0.0,
            end_seconds: Some(1.5),
            box_rgba: Some(0x0000_00ff),
        };
        let (plain, texted) = (dir.path().join("plain.mp4"), dir.path().join("text.mp4"));
        render(&input, &plain, &[]);
        render(&input, &texted, &[overlay]);
        let frame = |path: &Path, t| rgb_frame_at(path, t, Duration::from_secs(10)).expect("frame");
        let region = (130..230, 60..260);
        let inside = difference(
            &frame(&plain, 0.5),
            &frame(&texted, 0.5),
            region.0.clone(),
            region.1.clone(),
        );
        let outside = difference(
            &frame(&plain, 2.5),
            &frame(&texted, 2.5),
            region.0,
            region.1,
        );
        assert!(
            inside > 25.0,
            "text should change the region: mean difference {inside}"
        );
        assert!(
            outside < 4.0,
            "no text after its end: mean difference {outside}"
        );
    }

    #[test]
    fn positions_map_to_alignments() {
        assert_eq!(alignment(Position::BottomCenter), ("center", "bottom"));
        assert_eq!(
            alignment(Position::Xy { x: 0.1, y: 0.9 }),
            ("position", "position")
        );
    }
}
