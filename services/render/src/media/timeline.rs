//! Renders an edit timeline: clips (videos, still images, solid colours) in
//! sequence, joined by cuts, crossfades or fades through black, background
//! audio mixed under them, text and subtitles drawn on top, and the result
//! encoded like every other render.
//!
//! Composition uses GStreamer Editing Services (GES). Its NLE elements
//! already do what a hand-built graph would have to re-invent for a
//! timeline: seek each clip to its in-point and start it at its place, fill
//! gaps with black and silence, mix overlapping clips, and scale every
//! source to one size and rate. The GES timeline is only a source bin in our
//! own pipeline, so encoding, progress, cancel and the stall watchdog are
//! those of the other operations. The simple operations keep their
//! hand-built graphs: they are faster, and they can copy streams.

use std::path::{Path, PathBuf};

use ges::prelude::*;
use gst_controller::prelude::*;
use gstreamer as gst;
use gstreamer_controller as gst_controller;
use gstreamer_editing_services as ges;

use crate::media::MediaError;
use crate::media::elements::{
    Fit, VideoFormat, add_chain, capsfilter, element, file_sink, link_to_mux, mux_queue,
    pipeline_error, static_pad,
};
use crate::media::overlay::{TextOverlay, overlay_chain};
use crate::media::probe::{MediaInfo, probe};
use crate::media::runner::{self, Control};
use crate::media::subtitles::{Cue, subtitle_element};

/// Everything an edit draws and plays, in output-timeline seconds. `S`
/// names media: store keys in a plan, local files when rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline<S = PathBuf> {
    pub clips: Vec<Clip<S>>,
    pub overlays: Vec<TextOverlay>,
    pub subtitles: Option<SubtitleTrack>,
    pub audio: Vec<AudioBed<S>>,
}

impl<S> Clip<S> {
    /// The same clip reading another source.
    pub fn with_source<T>(self, source: ClipSource<T>) -> Clip<T> {
        Clip {
            source,
            in_seconds: self.in_seconds,
            out_seconds: self.out_seconds,
            duration_seconds: self.duration_seconds,
            transition: self.transition,
        }
    }
}

impl<S> Timeline<S> {
    /// Every medium the timeline reads, clips first, then audio.
    pub fn sources(&self) -> impl Iterator<Item = &S> {
        let clips = self.clips.iter().filter_map(|clip| match &clip.source {
            ClipSource::Media(source) => Some(source),
            ClipSource::Color(_) => None,
        });
        clips.chain(self.audio.iter().map(|bed| &bed.source))
    }

    /// The same timeline with each medium's name replaced by `locate`'s.
    pub fn locate<T, E>(
        &self,
        mut locate: impl FnMut(&S) -> Result<T, E>,
    ) -> Result<Timeline<T>, E> {
        let clips = self
            .clips
            .iter()
            .map(|clip| {
                Ok(Clip {
                    source: match &clip.source {
                        ClipSource::Media(source) => ClipSource::Media(locate(source)?),
                        ClipSource::Color(rgba) => ClipSource::Color(*rgba),
                    },
                    in_seconds: clip.in_seconds,
                    out_seconds: clip.out_seconds,
                    duration_seconds: clip.duration_seconds,
                    transition: clip.transition,
                })
            })
            .collect::<Result<_, E>>()?;
        let audio = self
            .audio
            .iter()
            .map(|bed| {
                Ok(AudioBed {
                    source: locate(&bed.source)?,
                    volume: bed.volume,
                    start_seconds: bed.start_seconds,
                    in_seconds: bed.in_seconds,
                    duration_seconds: bed.duration_seconds,
                    fade_in_seconds: bed.fade_in_seconds,
                    fade_out_seconds: bed.fade_out_seconds,
                })
            })
            .collect::<Result<_, E>>()?;
        Ok(Timeline {
            clips,
            overlays: self.overlays.clone(),
            subtitles: self.subtitles.clone(),
            audio,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Clip<S = PathBuf> {
    pub source: ClipSource<S>,
    /// Videos: the part used, `[in_seconds, out_seconds)`; `None` runs to
    /// the source's end.
    pub in_seconds: f64,
    pub out_seconds: Option<f64>,
    /// Stills and colours: how long they show.
    pub duration_seconds: Option<f64>,
    /// How the clip enters; on the first clip, from black.
    pub transition: Option<Transition>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClipSource<S = PathBuf> {
    /// A video or a still image.
    Media(S),
    /// A solid colour, 0xRRGGBBAA.
    Color(u32),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition {
    pub kind: TransitionKind,
    pub seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionKind {
    /// The clip overlaps the previous one and fades in over it.
    Crossfade,
    /// The previous clip fades to black, this one fades in from black.
    Fade,
}

/// Subtitle cues drawn with one style.
#[derive(Debug, Clone, PartialEq)]
pub struct SubtitleTrack {
    pub cues: Vec<Cue>,
    /// Font, size, colours and position; text and window are unused.
    pub style: TextOverlay,
}

/// Background audio under the clips.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioBed<S = PathBuf> {
    pub source: S,
    pub volume: f64,
    pub start_seconds: f64,
    pub in_seconds: f64,
    /// `None` plays until the source or the timeline ends.
    pub duration_seconds: Option<f64>,
    pub fade_in_seconds: f64,
    pub fade_out_seconds: f64,
}

/// Where a clip sits on the output timeline and how it fades.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Placement {
    pub start: f64,
    pub length: f64,
    /// Seconds it fades in: from black and silence, or, entering by a
    /// crossfade, over the previous clip.
    pub fade_in: f64,
    /// Seconds it fades out to black and silence.
    pub fade_out: f64,
    /// Seconds the next clip crossfades in over its end.
    pub crossfade_out: f64,
}

/// How a level rises from zero at a clip's start and falls back to zero at
/// its end, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Envelope {
    pub length: f64,
    pub rise: f64,
    pub fall: f64,
}

impl Placement {
    fn end(&self) -> f64 {
        self.start + self.length
    }

    /// The picture stays opaque under a crossfade out: the next clip sits
    /// on the layer above and fades in over it, so each pixel is
    /// `A·(1−t) + B·t`. Fading this one out as well would let the black
    /// background through.
    pub(crate) fn picture(&self) -> Envelope {
        Envelope {
            length: self.length,
            rise: self.fade_in,
            fall: self.fade_out,
        }
    }

    /// Sound has no layers: the mixer adds every clip playing, so under a
    /// crossfade this clip's volume falls as the next one's rises.
    pub(crate) fn sound(&self) -> Envelope {
        Envelope {
            fall: self.fade_out + self.crossfade_out,
            ..self.picture()
        }
    }
}

/// Picture size and rate when neither the output nor a video sets them.
const DEFAULT_PICTURE: (u32, u32) = (1280, 720);
const DEFAULT_FPS: u32 = 30;
const AUDIO_RATE: i32 = 48_000;

/// Places clips one after another: a crossfade pulls a clip back over the
/// end of the previous one, a fade leaves them end to end and fades both
/// sides. Errors name the clip (`clips[i]`).
pub(crate) fn layout<S>(clips: &[Clip<S>], lengths: &[f64]) -> Result<Vec<Placement>, String> {
    let mut placed: Vec<Placement> = Vec::with_capacity(clips.len());
    for (i, (clip, &length)) in clips.iter().zip(lengths).enumerate() {
        let mut here = Placement {
            start: placed.last().map_or(0.0, Placement::end),
            length,
            fade_in: 0.0,
            fade_out: 0.0,
            crossfade_out: 0.0,
        };
        match (clip.transition, placed.last_mut()) {
            (None, _) => {}
            (Some(t), None) => here.fade_in = t.seconds,
            (Some(t), Some(previous)) if t.kind == TransitionKind::Fade => {
                previous.fade_out = t.seconds;
                here.fade_in = t.seconds;
            }
            (Some(t), Some(previous)) => {
                overlap(previous, &mut here, t.seconds)
                    .map_err(|reason| format!("clips[{i}].transition: {reason}"))?;
            }
        }
        placed.push(here);
    }
    for (i, placement) in placed.iter().enumerate() {
        if placement.fade_in + placement.fade_out > placement.length + 1e-9 {
            return Err(format!(
                "clips[{i}]: fades of {:.2} s in and {:.2} s out do not fit its {:.2} s",
                placement.fade_in, placement.fade_out, placement.length
            ));
        }
    }
    Ok(placed)
}

/// Pulls `here` back over the end of `previous` for a crossfade of
/// `seconds`, which both clips ramp over.
fn overlap(previous: &mut Placement, here: &mut Placement, seconds: f64) -> Result<(), String> {
    here.start -= seconds;
    // The overlap may not reach back into the previous clip's own way in
    // (a crossfade from the clip before it, or a fade from black): three
    // clips would mix and the ramps would clash.
    let entered = previous.start + previous.fade_in - 1e-9;
    if here.start <= previous.start || here.start < entered || seconds >= here.length {
        return Err(format!(
            "a {seconds:.2} s crossfade needs both clips longer than it, and no overlap \
             with an earlier transition"
        ));
    }
    previous.crossfade_out = seconds;
    here.fade_in = seconds;
    Ok(())
}

/// What is known about each clip's media before the timeline is built.
struct Probed {
    info: Option<MediaInfo>,
    length: f64,
}

/// Blocking: renders `timeline` into `output` in `format`.
pub fn render_timeline(
    timeline: &Timeline,
    output: &Path,
    format: &VideoFormat,
    control: &mut Control<'_>,
) -> Result<(), MediaError> {
    runner::init()?;
    let probed: Vec<Probed> = timeline
        .clips
        .iter()
        .enumerate()
        .map(|(i, clip)| probe_clip(i, clip))
        .collect::<Result<_, _>>()?;
    let lengths: Vec<f64> = probed.iter().map(|p| p.length).collect();
    let placements = layout(&timeline.clips, &lengths).map_err(MediaError::Timeline)?;
    let total = placements.iter().map(Placement::end).fold(0.0, f64::max);
    let beds = timeline
        .audio
        .iter()
        .map(|bed| bed_length(bed, total).map(|length| (bed, length)))
        .collect::<Result<Vec<_>, _>>()?;
    let shape = Shape::of(format, &probed);
    let has_audio = !beds.is_empty() || probed.iter().any(|p| p.has_audio());
    runner::run(control, |session| {
        let ges_timeline = build(timeline, &placements, &beds, &shape, has_audio)?;
        let pipeline = session.pipeline().clone();
        pipeline.add(&ges_timeline).map_err(pipeline_error)?;
        let mux = format.muxer()?;
        let sink = file_sink(output)?;
        add_chain(&pipeline, &[mux.clone(), sink.clone()])?;
        session.add_output(output);
        session.monitor().watch(&static_pad(&sink, "sink")?);
        for track in ges_timeline.tracks() {
            let pad = ges_timeline
                .pad_for_track(&track)
                .ok_or_else(|| MediaError::Pipeline("timeline track without a pad".into()))?;
            let chain = encode_chain(track.track_type(), timeline, format)?;
            add_chain(&pipeline, &chain)?;
            pad.link(&static_pad(&chain[0], "sink")?)
                .map_err(pipeline_error)?;
            let template = if track.track_type() == ges::TrackType::VIDEO {
                "video_%u"
            } else {
                "audio_%u"
            };
            link_to_mux(&chain, &mux, template)?;
            if let Some(last) = chain.last() {
                session.monitor().track(&static_pad(last, "src")?);
            }
        }
        session.set_span(Some(gst::ClockTime::from_seconds_f64(total)));
        session.play_to_eos()
    })
}

/// Probes a clip's media and works out how long it shows, refusing
/// settings that do not fit the media (named by input).
fn probe_clip(i: usize, clip: &Clip) -> Result<Probed, MediaError> {
    let path = match &clip.source {
        ClipSource::Color(_) => {
            let length = clip.duration_seconds.ok_or_else(|| {
                MediaError::Timeline(format!("clips[{i}]: a colour needs duration_seconds"))
            })?;
            return Ok(Probed { info: None, length });
        }
        ClipSource::Media(path) => path,
    };
    let info = probe(path)?;
    let bad = |reason: String| MediaError::bad_input(path, reason);
    let length = match (is_still(&info), clip.duration_seconds) {
        (true, Some(seconds)) => seconds,
        (true, None) => return Err(bad("is a still image: set duration_seconds".into())),
        (false, Some(_)) => return Err(bad("is a video, so duration_seconds must be 0".into())),
        (false, None) if info.video.is_none() => {
            return Err(bad("has no video: add it as an audio track instead".into()));
        }
        (false, None) => {
            let out = clip.out_seconds.unwrap_or(info.duration_seconds);
            if clip.in_seconds >= info.duration_seconds || out > info.duration_seconds + 0.05 {
                return Err(bad(format!(
                    "in/out {:.2}..{:.2} s is outside the video's {:.2} s",
                    clip.in_seconds, out, info.duration_seconds
                )));
            }
            out.min(info.duration_seconds) - clip.in_seconds
        }
    };
    Ok(Probed {
        info: Some(info),
        length,
    })
}

fn is_still(info: &MediaInfo) -> bool {
    info.video.as_ref().is_some_and(|video| video.fps == 0.0) && info.audio.is_none()
}

impl Probed {
    fn has_audio(&self) -> bool {
        self.info.as_ref().is_some_and(|info| info.audio.is_some())
    }
}

/// How long a bed plays: as asked, or until its source or the timeline ends.
fn bed_length(bed: &AudioBed, total: f64) -> Result<f64, MediaError> {
    let info = probe(&bed.source)?;
    if info.audio.is_none() {
        return Err(MediaError::bad_input(&bed.source, "has no audio stream"));
    }
    let available = info.duration_seconds - bed.in_seconds;
    if available <= 0.0 {
        return Err(MediaError::bad_input(
            &bed.source,
            format!(
                "in_seconds {:.2} is past the audio's end ({:.2} s)",
                bed.in_seconds, info.duration_seconds
            ),
        ));
    }
    let wanted = bed
        .duration_seconds
        .unwrap_or(total - bed.start_seconds)
        .min(total - bed.start_seconds);
    Ok(wanted.min(available).max(0.0))
}

/// The output picture: as the output asks, else the first video's (even
/// sizes, for the encoders), else 720p.
#[derive(Debug, Clone, Copy)]
struct Shape {
    width: u32,
    height: u32,
    fps: u32,
    cover: bool,
}

impl Shape {
    fn of(format: &VideoFormat, probed: &[Probed]) -> Self {
        let first_video = probed
            .iter()
            .filter_map(|p| p.info.as_ref()?.video.as_ref())
            .find(|video| video.fps > 0.0);
        let (width, height) = format.picture.map_or_else(
            || first_video.map_or(DEFAULT_PICTURE, |v| (v.width, v.height)),
            |picture| (picture.width, picture.height),
        );
        let fps = format
            .fps
            .unwrap_or_else(|| first_video.map_or(DEFAULT_FPS, |v| v.fps.round().max(1.0) as u32));
        Shape {
            width: (width / 2 * 2).max(2),
            height: (height / 2 * 2).max(2),
            fps,
            cover: format.picture.is_some_and(|p| p.fit == Fit::Cover),
        }
    }

    fn video_caps(&self) -> gst::Caps {
        let int = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
        gst::Caps::builder("video/x-raw")
            .field("width", int(self.width))
            .field("height", int(self.height))
            .field("framerate", gst::Fraction::new(int(self.fps), 1))
            .build()
    }
}

fn seconds(value: f64) -> gst::ClockTime {
    gst::ClockTime::from_seconds_f64(value.max(0.0))
}

/// Builds the GES timeline: each clip on a layer of its own, later clips
/// above earlier ones, then audio beds on one more layer.
///
/// Crossfades are our own ramps, not GES transitions: the incoming clip's
/// alpha and volume rise over an outgoing clip that stays opaque and whose
/// volume falls (see [`Placement::picture`], [`Placement::sound`]). GES
/// 1.22's crossfade cannot be made a straight mix. Its transition fades
/// the outgoing clip 1→0 and the incoming 0→1 in a compositor with a
/// transparent background, asking for the operators "source" and "add";
/// but its smart mixer copies each frame's operator from the clip's
/// framepositioner onto the mixer pad ("over" unless set), so both are
/// blended "over" and the result, over black, is `A·(1−t)² + B·t`: a
/// quarter too dark at the midpoint. With "source" and "add" it would not
/// be linear either, since the compositor's "add" sums alphas but weights
/// colour like "over" (`A/3 + 2B/3` at the midpoint). An opaque picture
/// under one at alpha `t` is the one stacking that mixes `A·(1−t) + B·t`.
/// Where the incoming picture is transparent (bars of another aspect ratio
/// under `Fit::Contain`, a transparent still) the outgoing one shows
/// unfaded until it ends.
fn build(
    timeline: &Timeline,
    placements: &[Placement],
    beds: &[(&AudioBed, f64)],
    shape: &Shape,
    has_audio: bool,
) -> Result<ges::Timeline, MediaError> {
    let ges_timeline = ges::Timeline::new();
    let video = ges::VideoTrack::new();
    video.set_restriction_caps(&shape.video_caps());
    ges_timeline.add_track(&video).map_err(pipeline_error)?;
    if has_audio {
        let audio = ges::AudioTrack::new();
        audio.set_restriction_caps(
            &gst::Caps::builder("audio/x-raw")
                .field("rate", AUDIO_RATE)
                .field("channels", 2i32)
                .build(),
        );
        ges_timeline.add_track(&audio).map_err(pipeline_error)?;
    }
    // Layer 0 is the top, so the last clip gets the first layer.
    let layers: Vec<ges::Layer> = timeline
        .clips
        .iter()
        .map(|_| ges_timeline.append_layer())
        .collect();
    let stacked = timeline
        .clips
        .iter()
        .zip(placements)
        .zip(layers.iter().rev());
    for ((clip, placement), layer) in stacked {
        let added = add_clip(layer, clip, placement)?;
        if shape.cover && matches!(clip.source, ClipSource::Media(_)) {
            let crop = ges::Effect::new(&format!(
                "aspectratiocrop aspect-ratio={}/{}",
                shape.width, shape.height
            ))
            .map_err(pipeline_error)?;
            added.add(&crop).map_err(pipeline_error)?;
        }
        fade(&added, clip.in_seconds, placement, 1.0)?;
    }
    let music = ges_timeline.append_layer();
    for (bed, length) in beds {
        add_bed(&music, bed, *length)?;
    }
    if !ges_timeline.commit_sync() {
        return Err(MediaError::Pipeline(
            "the timeline could not be committed".into(),
        ));
    }
    Ok(ges_timeline)
}

fn add_clip(
    layer: &ges::Layer,
    clip: &Clip,
    placement: &Placement,
) -> Result<ges::Clip, MediaError> {
    let (start, length) = (seconds(placement.start), seconds(placement.length));
    match &clip.source {
        ClipSource::Media(path) => {
            let asset = uri_asset(path)?;
            let inpoint = if asset.is_image() {
                gst::ClockTime::ZERO
            } else {
                seconds(clip.in_seconds)
            };
            layer
                .add_asset(&asset, start, inpoint, length, ges::TrackType::UNKNOWN)
                .map_err(|e| MediaError::bad_input(path, e.to_string()))
        }
        ClipSource::Color(rgba) => {
            let asset = ges::Asset::request::<ges::TestClip>(None).map_err(pipeline_error)?;
            let added = layer
                .add_asset(
                    &asset,
                    start,
                    gst::ClockTime::ZERO,
                    length,
                    ges::TrackType::VIDEO,
                )
                .map_err(pipeline_error)?;
            let test = added
                .downcast_ref::<ges::TestClip>()
                .ok_or_else(|| MediaError::Pipeline("colour clip is not a test clip".into()))?;
            test.set_vpattern(ges::VideoTestPattern::SolidColor);
            // videotestsrc takes 0xAARRGGBB.
            test.set_child_property("foreground-color", rgba.rotate_right(8).to_value())
                .map_err(pipeline_error)?;
            Ok(added)
        }
    }
}

fn uri_asset(path: &Path) -> Result<ges::UriClipAsset, MediaError> {
    let uri = gst::glib::filename_to_uri(path, None)
        .map_err(|e| MediaError::bad_input(path, e.to_string()))?;
    ges::UriClipAsset::request_sync(&uri).map_err(|e| MediaError::bad_input(path, e.to_string()))
}

fn add_bed(layer: &ges::Layer, bed: &AudioBed, length: f64) -> Result<(), MediaError> {
    let asset = uri_asset(&bed.source)?;
    let added = layer
        .add_asset(
            &asset,
            seconds(bed.start_seconds),
            seconds(bed.in_seconds),
            seconds(length),
            ges::TrackType::AUDIO,
        )
        .map_err(|e| MediaError::bad_input(&bed.source, e.to_string()))?;
    let placement = Placement {
        start: bed.start_seconds,
        length,
        fade_in: bed.fade_in_seconds.min(length),
        fade_out: bed.fade_out_seconds.min(length),
        crossfade_out: 0.0,
    };
    fade(&added, bed.in_seconds, &placement, bed.volume)
}

/// Sets the clip's level (`volume` for sound, 1 for picture) and ramps it
/// from and to zero over the placement's fades, on every track element:
/// picture by alpha over what lies below (black, or the clip it
/// crossfades from), sound by volume.
fn fade(
    clip: &ges::Clip,
    inpoint: f64,
    placement: &Placement,
    level: f64,
) -> Result<(), MediaError> {
    for child in clip.children(false) {
        let Ok(element) = child.downcast::<ges::TrackElement>() else {
            continue;
        };
        let (property, envelope) = if element.is::<ges::VideoSource>() {
            ("alpha", placement.picture())
        } else if element.is::<ges::AudioSource>() {
            ("volume", placement.sound())
        } else {
            continue;
        };
        if envelope.rise == 0.0 && envelope.fall == 0.0 {
            if property == "volume" && level != 1.0 {
                TimelineElementExtManual::set_child_property(&element, property, level.to_value())
                    .map_err(pipeline_error)?;
            }
            continue;
        }
        let ramp = gst_controller::InterpolationControlSource::new();
        ramp.set_mode(gst_controller::InterpolationMode::Linear);
        // Control points are in the source's own time, which starts at
        // the in-point (0 for stills and colours).
        let base = if element.is::<ges::VideoSource>() && placement_is_still(clip) {
            0.0
        } else {
            inpoint
        };
        for (at, value) in ramp_points(&envelope, level) {
            ramp.set(seconds(base + at), value);
        }
        if !element.set_control_source(&ramp, property, "direct-absolute") {
            return Err(MediaError::Pipeline(format!(
                "cannot fade {property} of {}",
                element.name().unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// Stills and colours have no in-point of their own.
fn placement_is_still(clip: &ges::Clip) -> bool {
    clip.is::<ges::TestClip>()
        || clip
            .downcast_ref::<ges::UriClip>()
            .is_some_and(|uri| uri.is_image())
}

/// (time in the clip, level) points of a rise / hold / fall ramp.
pub(crate) fn ramp_points(envelope: &Envelope, level: f64) -> Vec<(f64, f64)> {
    let mut points = Vec::with_capacity(4);
    if envelope.rise > 0.0 {
        points.push((0.0, 0.0));
    }
    points.push((envelope.rise, level));
    points.push((envelope.length - envelope.fall, level));
    if envelope.fall > 0.0 {
        points.push((envelope.length, 0.0));
    }
    points
}

/// From the timeline's raw output to the muxer: text and subtitles on the
/// picture, then the output's encoders.
fn encode_chain(
    kind: ges::TrackType,
    timeline: &Timeline,
    format: &VideoFormat,
) -> Result<Vec<gst::Element>, MediaError> {
    if kind == ges::TrackType::VIDEO {
        let mut chain = vec![
            element("queue")?,
            element("videoconvert")?,
            // Clips from different sources differ in colorimetry, and a
            // caps change mid-stream is one Matroska cannot store: pin it.
            capsfilter(
                gst::Caps::builder("video/x-raw")
                    .field("format", "I420")
                    .field("colorimetry", "bt709")
                    .field("chroma-site", "mpeg2")
                    .build(),
            )?,
        ];
        chain.extend(overlay_chain(&timeline.overlays)?);
        if let Some(subtitles) = &timeline.subtitles {
            chain.push(subtitle_element(&subtitles.style, subtitles.cues.clone())?);
        }
        chain.extend([format.video_encoder()?, mux_queue()?]);
        Ok(chain)
    } else {
        Ok(vec![
            element("queue")?,
            element("audioconvert")?,
            element("audioresample")?,
            format.audio_encoder()?,
            mux_queue()?,
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(transition: Option<Transition>) -> Clip {
        Clip {
            source: ClipSource::Color(0xff),
            in_seconds: 0.0,
            out_seconds: None,
            duration_seconds: Some(1.0),
            transition,
        }
    }

    fn crossfade(seconds: f64) -> Option<Transition> {
        Some(Transition {
            kind: TransitionKind::Crossfade,
            seconds,
        })
    }

    #[test]
    fn cuts_place_clips_end_to_end() {
        let placed = layout(&[clip(None), clip(None)], &[2.0, 3.0]).expect("layout");
        assert_eq!(placed[1].start, 2.0);
        assert_eq!(placed[1].end(), 5.0);
    }

    #[test]
    fn a_crossfade_overlaps_and_shortens() {
        let placed = layout(&[clip(None), clip(crossfade(0.5))], &[2.0, 3.0]).expect("layout");
        assert_eq!(placed[1].start, 1.5);
        assert_eq!(placed[1].end(), 4.5);
    }

    #[test]
    fn a_crossfade_fades_the_picture_in_over_the_previous_and_mixes_sound() {
        let placed = layout(&[clip(None), clip(crossfade(0.5))], &[2.0, 3.0]).expect("layout");
        // The outgoing picture stays opaque under the incoming one.
        assert_eq!(
            ramp_points(&placed[0].picture(), 1.0),
            vec![(0.0, 1.0), (2.0, 1.0)]
        );
        assert_eq!(
            ramp_points(&placed[1].picture(), 1.0),
            vec![(0.0, 0.0), (0.5, 1.0), (3.0, 1.0)]
        );
        // Sound falls as the incoming sound rises, over the same 0.5 s.
        assert_eq!(
            ramp_points(&placed[0].sound(), 1.0),
            vec![(0.0, 1.0), (1.5, 1.0), (2.0, 0.0)]
        );
        assert_eq!(placed[1].sound(), placed[1].picture());
    }

    #[test]
    fn a_fade_darkens_both_sides_without_overlap() {
        let fade = Some(Transition {
            kind: TransitionKind::Fade,
            seconds: 0.5,
        });
        let placed = layout(&[clip(fade), clip(fade)], &[2.0, 3.0]).expect("layout");
        assert_eq!((placed[0].fade_in, placed[0].fade_out), (0.5, 0.5));
        assert_eq!((placed[1].start, placed[1].fade_in), (2.0, 0.5));
        assert_eq!(
            ramp_points(&placed[0].picture(), 1.0),
            vec![(0.0, 0.0), (0.5, 1.0), (1.5, 1.0), (2.0, 0.0)]
        );
    }

    #[test]
    fn crossfades_longer_than_a_clip_are_refused_by_name() {
        let err = layout(&[clip(None), clip(crossfade(2.5))], &[2.0, 3.0]).expect_err("long");
        assert!(err.starts_with("clips[1].transition"), "{err}");
        // Two crossfades into and out of a 1 s clip would mix three clips.
        let err = layout(
            &[clip(None), clip(crossfade(0.6)), clip(crossfade(0.6))],
            &[2.0, 1.0, 2.0],
        )
        .expect_err("three-way");
        assert!(err.starts_with("clips[2].transition"), "{err}");
        // Nor may it overlap the previous clip's fade from black.
        let fade = Some(Transition {
            kind: TransitionKind::Fade,
            seconds: 0.8,
        });
        let err = layout(
            &[clip(None), clip(fade), clip(crossfade(0.5))],
            &[2.0, 1.0, 2.0],
        )
        .expect_err("over a fade-in");
        assert!(err.starts_with("clips[2].transition"), "{err}");
    }

    mod rendered {
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        use super::*;
        use crate::media::elements::{Picture, VideoFormat};
        use crate::media::frames::{ImageFormat, rgb_frame_at, thumbnails};
        use crate::media::overlay::Position;
        use crate::media::testsrc::{TestClip, write_clip};
        use crate::media::testutil::run_launch;
        use crate::media::{AudioFormat, CancelFlag, extract_audio};

        const STALL: Duration = Duration::from_secs(20);

        fn render(timeline: &Timeline, output: &Path, format: &VideoFormat) {
            let cancel = CancelFlag::default();
            let mut quiet = |_| {};
            let mut control = Control::new(&cancel, STALL, &mut quiet);
            render_timeline(timeline, output, format, &mut control).expect("render");
        }

        fn pattern_clip(dir: &Path, name: &str, pattern: &str, spec: TestClip) -> PathBuf {
            let path = dir.join(name);
            write_clip(&spec, pattern, &path).expect("clip");
            path
        }

        /// Mean (r, g, b) of the middle of the frame at `t`.
        fn colour_at(path: &Path, t: f64) -> (f64, f64, f64) {
            let frame = rgb_frame_at(path, t, STALL).expect("frame");
            let (mut sum, mut n) = ([0u64; 3], 0u64);
            for row in frame.height / 4..frame.height * 3 / 4 {
                for col in frame.width / 4..frame.width * 3 / 4 {
                    let i = (row * frame.width + col) * 3;
                    for (c, total) in sum.iter_mut().enumerate() {
                        *total += u64::from(frame.data[i + c]);
                    }
                    n += 1;
                }
            }
            let mean = |c: usize| sum[c] as f64 / n as f64;
            (mean(0), mean(1), mean(2))
        }

        /// Checks the colour at `t` within 20 per channel, which YUV
        /// round trips and frame timing stay well inside.
        fn assert_colour(path: &Path, t: f64, want: (f64, f64, f64)) {
            let got = colour_at(path, t);
            let near = |a: f64, b: f64| (a - b).abs() <= 20.0;
            assert!(
                near(got.0, want.0) && near(got.1, want.1) && near(got.2, want.2),
                "at {t} s: {got:?}, want {want:?}"
            );
        }

        /// RMS of the decoded sound (mono) in `[from, to)` seconds.
        fn loudness(path: &Path, from: f64, to: f64) -> f64 {
            const RATE: f64 = 48_000.0;
            let sums = Arc::new(Mutex::new((0.0f64, 0u64)));
            let sink = Arc::clone(&sums);
            let launch = format!(
                "filesrc location=\"{}\" ! decodebin ! audioconvert ! audioresample ! \
                 audio/x-raw,format=F32LE,rate={RATE},channels=1 ! fakesink name=sink sync=false",
                path.display()
            );
            run_launch(&launch, move |_, buffer| {
                let start = buffer.pts().map_or(0.0, gst::ClockTime::seconds_f64);
                let map = buffer.map_readable().expect("map");
                let mut sums = sink.lock().expect("lock");
                for (i, bytes) in map.chunks_exact(4).enumerate() {
                    let t = start + i as f64 / RATE;
                    if (from..to).contains(&t) {
                        let v = f64::from(f32::from_le_bytes(bytes.try_into().expect("4")));
                        *sums = (sums.0 + v * v, sums.1 + 1);
                    }
                }
            });
            let (squares, n) = *sums.lock().expect("lock");
            assert!(n > 0, "no sound in {from}..{to} s");
            (squares / n as f64).sqrt()
        }

        fn media(source: PathBuf) -> Clip {
            Clip {
                source: ClipSource::Media(source),
                in_seconds: 0.0,
                out_seconds: None,
                duration_seconds: None,
                transition: None,
            }
        }

        #[test]
        fn clips_transitions_stills_and_music_make_one_video() {
            let dir = tempfile::tempdir().expect("dir");
            let white = pattern_clip(
                dir.path(),
                "white.mp4",
                "white",
                TestClip {
                    seconds: 3.0,
                    width: 640,
                    height: 360,
                    ..TestClip::default()
                },
            );
            let blue = pattern_clip(dir.path(), "blue.mp4", "blue", TestClip::default());
            let cancel = CancelFlag::default();
            let mut quiet = |_| {};
            let mut control = Control::new(&cancel, STALL, &mut quiet);
            let png = thumbnails(
                &blue,
                &[0.5],
                ImageFormat::Png,
                None,
                dir.path(),
                &mut control,
            )
            .expect("png")
            .remove(0);
            let music = dir.path().join("music.m4a");
            extract_audio(&white, &music, AudioFormat::M4a, None, &mut control).expect("music");

            let timeline = Timeline {
                clips: vec![
                    Clip {
                        in_seconds: 0.5,
                        out_seconds: Some(2.5),
                        ..media(white)
                    },
                    Clip {
                        duration_seconds: Some(1.0),
                        transition: Some(Transition {
                            kind: TransitionKind::Crossfade,
                            seconds: 0.5,
                        }),
                        ..media(PathBuf::new())
                    }
                    .with_source(ClipSource::Color(0xff00_00ff)),
                    Clip {
                        duration_seconds: Some(1.0),
                        transition: Some(Transition {
                            kind: TransitionKind::Fade,
                            seconds: 0.4,
                        }),
                        ..media(png)
                    },
                ],
                overlays: Vec::new(),
                subtitles: None,
                audio: vec![AudioBed {
                    source: music,
                    volume: 0.5,
                    start_seconds: 0.0,
                    in_seconds: 0.0,
                    duration_seconds: None,
                    fade_in_seconds: 0.5,
                    fade_out_seconds: 0.5,
                }],
            };
            let output = dir.path().join("edit.mp4");
            let format = VideoFormat {
                picture: Some(Picture {
                    width: 320,
                    height: 180,
                    fit: Fit::Contain,
                }),
                fps: Some(25),
                ..VideoFormat::default()
            };
            render(&timeline, &output, &format);

            let info = probe(&output).expect("probe");
            // 2 s + 1 s - 0.5 s crossfade + 1 s.
            assert!((info.duration_seconds - 3.5).abs() < 0.1, "{info:?}");
            let video = info.video.as_ref().expect("video");
            assert_eq!((video.width, video.height, video.fps), (320, 180, 25.0));
            assert!(info.audio.is_some(), "music under the clips: {info:?}");

            let (r, g, b) = colour_at(&output, 0.5);
            assert!(
                r > 200.0 && g > 200.0 && b > 200.0,
                "white clip: {r} {g} {b}"
            );
            // The 1.5..2.0 s crossfade mixes white·(1−t) + red·t. GES
            // 1.22's own transition gave (189, 67, 68) at the midpoint.
            for (t, rest) in [(0.25, 191.0), (0.5, 128.0), (0.75, 64.0)] {
                assert_colour(&output, 1.5 + 0.5 * t, (255.0, rest, rest));
            }
            let (r, g, b) = colour_at(&output, 2.04);
            assert!(r > 200.0 && g < 40.0 && b < 40.0, "red colour: {r} {g} {b}");
            let (r, g, b) = colour_at(&output, 2.5);
            assert!(
                r < 40.0 && g < 40.0 && b < 40.0,
                "faded to black: {r} {g} {b}"
            );
            let (r, g, b) = colour_at(&output, 3.3);
            assert!(
                b > 200.0 && r < 40.0,
                "blue still after its fade-in: {r} {g} {b}"
            );
        }

        #[test]
        fn crossfaded_sound_falls_as_the_next_picture_rises() {
            let dir = tempfile::tempdir().expect("dir");
            // 2 s of a 440 Hz tone, into a silent colour over its last 1 s.
            let tone = pattern_clip(dir.path(), "tone.mp4", "black", TestClip::default());
            let timeline = Timeline {
                clips: vec![
                    media(tone),
                    Clip {
                        duration_seconds: Some(1.5),
                        transition: crossfade(1.0),
                        ..media(PathBuf::new())
                    }
                    .with_source(ClipSource::Color(0xffff_ffff)),
                ],
                overlays: Vec::new(),
                subtitles: None,
                audio: Vec::new(),
            };
            let output = dir.path().join("xfade.mp4");
            render(&timeline, &output, &VideoFormat::default());
            let full = loudness(&output, 0.3, 0.7);
            let (middle, late) = (
                loudness(&output, 1.45, 1.55) / full,
                loudness(&output, 1.85, 1.95) / full,
            );
            assert!(full > 0.1, "tone before the crossfade: {full}");
            assert!((middle - 0.5).abs() < 0.1, "half way down: {middle}");
            assert!(late < 0.3, "nearly silent: {late}");
            assert_colour(&output, 1.5, (128.0, 128.0, 128.0));
        }

        #[test]
        fn subtitles_show_only_during_their_cue() {
            let dir = tempfile::tempdir().expect("dir");
            let black = pattern_clip(
                dir.path(),
                "black.mp4",
                "black",
                TestClip {
                    audio: false,
                    ..TestClip::default()
                },
            );
            let timeline = Timeline {
                clips: vec![media(black)],
                overlays: Vec::new(),
                subtitles: Some(SubtitleTrack {
                    cues: vec![Cue {
                        start: 0.5,
                        end: 1.0,
                        text: "MMMMMMMM".into(),
                    }],
                    style: TextOverlay {
                        text: String::new(),
                        font: "Sans".into(),
                        size_px: 60,
                        color_rgba: 0xffff_ffff,
                        position: Position::Center,
                        start_seconds: 0.0,
                        end_seconds: None,
                        box_rgba: None,
                    },
                }),
                audio: Vec::new(),
            };
            let output = dir.path().join("subs.mp4");
            render(&timeline, &output, &VideoFormat::default());
            let info = probe(&output).expect("probe");
            assert!(info.audio.is_none(), "nothing audible, no audio track");
            let (before, during, after) = (
                colour_at(&output, 0.25).0,
                colour_at(&output, 0.75).0,
                colour_at(&output, 1.5).0,
            );
            assert!(before < 10.0 && after < 10.0, "{before} {after}");
            assert!(during > 30.0, "cue drawn: {during}");
        }
    }
}
