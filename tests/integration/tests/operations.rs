//! Every media operation through the whole service, on generated media: the
//! stored result is checked by GStreamer's discoverer (duration, codecs,
//! streams, size), and copy paths report that nothing was re-encoded.

use std::{path::PathBuf, time::Duration};

use futures::StreamExt as _;
use reelmesh_cli::{ReelmeshClient, client::asset_source};
use reelmesh_integration_tests::{KEY_A, TestCluster, clips, packets::video_packets};
use reelmesh_proto::v1::{self as pb, job_spec::Operation};
use reelmesh_render::media::{self, MediaInfo, TestClip};

/// Submits `spec`, follows it to its end and returns the final job.
async fn run(client: &mut ReelmeshClient, spec: pb::JobSpec) -> anyhow::Result<pb::Job> {
    let job = client.submit(spec).await?;
    let events = client.watch(&job.id).await?;
    tokio::time::timeout(Duration::from_secs(90), events.for_each(|_| async {})).await?;
    Ok(client.get(&job.id).await?)
}

/// Downloads output `key` into a temporary directory (kept alive by the
/// returned guard).
async fn download(
    client: &mut ReelmeshClient,
    key: &str,
) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let local = dir.path().join(key.rsplit('/').next().unwrap_or("out"));
    client.download_file(key, &local).await?;
    Ok((dir, local))
}

/// Downloads output `key` and probes it.
async fn probe_output(client: &mut ReelmeshClient, key: &str) -> anyhow::Result<MediaInfo> {
    let (_dir, local) = download(client, key).await?;
    Ok(media::probe(&local)?)
}

fn completed(job: &pb::Job) -> pb::JobOutput {
    assert_eq!(
        job.state(),
        pb::JobState::Completed,
        "job failed: {}",
        job.error
    );
    job.output.clone().expect("a completed job has an output")
}

fn spec(operation: Operation) -> pb::JobSpec {
    pb::JobSpec {
        operation: Some(operation),
        ..Default::default()
    }
}

fn concat(keys: &[&str], copy: pb::CopyMode) -> pb::JobSpec {
    pb::JobSpec {
        copy: copy as i32,
        ..spec(Operation::Concat(pb::Concat {
            inputs: keys.iter().map(|key| asset_source(key)).collect(),
        }))
    }
}

async fn upload_clip(client: &mut ReelmeshClient, clip: TestClip, key: &str) -> anyhow::Result<()> {
    let (_dir, path) = clips::make_clip(&clip);
    client.upload_file(&path, key).await?;
    Ok(())
}

/// A PNG frame of the shared six-second clip, written into `dir`.
fn still_image(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut progress = |_| {};
    let mut control = media::Control::new(&cancel, Duration::from_secs(10), &mut progress);
    let mut images = media::thumbnails(
        clips::six_second_clip(),
        &[1.0],
        media::ImageFormat::Png,
        None,
        dir,
        &mut control,
    )?;
    Ok(images.remove(0))
}

fn clip(seconds: f64, width: u32, height: u32, fps: u32, audio: bool) -> TestClip {
    TestClip {
        seconds,
        width,
        height,
        fps,
        audio,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compatible_clips_concatenate_by_stream_copy() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    let (_dir, input) = clips::make_clip(&clip(2.0, 320, 240, 30, true));
    for key in ["in/a.mp4", "in/b.mp4", "in/c.mp4"] {
        client.upload_file(&input, key).await?;
    }
    let job = run(
        &mut client,
        concat(&["in/a.mp4", "in/b.mp4", "in/c.mp4"], pb::CopyMode::Auto),
    )
    .await?;
    let output = completed(&job);
    assert!(
        output.copied,
        "compatible inputs should be copied, not re-encoded"
    );
    let (_out_dir, result) = download(&mut client, &output.key).await?;
    assert_eq!(
        video_packets(&result)?,
        video_packets(&input)?.repeat(3),
        "the result holds the inputs' video packets unchanged, in order"
    );
    let info = media::probe(&result)?;
    assert!(
        (info.duration_seconds - 6.0).abs() <= 0.1,
        "duration {}",
        info.duration_seconds
    );
    assert_eq!(info.video.map(|v| v.codec), Some("h264".into()));
    assert_eq!(info.audio.map(|a| a.codec), Some("aac".into()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_clips_are_normalised_or_refused_when_copy_is_required() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    upload_clip(&mut client, clip(2.0, 320, 240, 30, true), "in/small.mp4").await?;
    upload_clip(
        &mut client,
        clip(2.0, 640, 360, 25, false),
        "in/wide-silent.mp4",
    )
    .await?;
    let inputs = ["in/small.mp4", "in/wide-silent.mp4"];

    let required = run(&mut client, concat(&inputs, pb::CopyMode::Required)).await?;
    assert_eq!(required.state(), pb::JobState::Failed);
    assert!(
        required.error.contains("cannot be copied"),
        "{}",
        required.error
    );

    let job = run(&mut client, concat(&inputs, pb::CopyMode::Auto)).await?;
    let output = completed(&job);
    assert!(!output.copied);
    let info = probe_output(&mut client, &output.key).await?;
    assert!(
        (info.duration_seconds - 4.0).abs() <= 0.15,
        "duration {}",
        info.duration_seconds
    );
    assert!(
        info.audio.is_some(),
        "the clip without audio gets silence, so audio runs throughout"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trims_copy_on_keyframes_and_smart_cut_between_them() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    let input = clips::six_second_clip();
    client.upload_file(input, "in/clip.mp4").await?;
    let source = video_packets(input)?;
    let trim = |start, end, copy: pb::CopyMode| pb::JobSpec {
        copy: copy as i32,
        ..spec(Operation::Trim(pb::Trim {
            input: Some(asset_source("in/clip.mp4")),
            start_seconds: start,
            end_seconds: end,
        }))
    };

    // Test clips have a keyframe every 2 s (60 frames at 30 fps).
    let aligned = completed(&run(&mut client, trim(2.0, 4.0, pb::CopyMode::Auto)).await?);
    assert!(aligned.copied, "a cut on keyframes needs no re-encode");
    assert_eq!(aligned.reencoded_seconds, 0.0);
    let (_dir, result) = download(&mut client, &aligned.key).await?;
    assert_eq!(video_packets(&result)?, source[60..120]);

    // 1.5 s is mid-GOP: frames 45..60 are re-encoded, 60..90 copied.
    let smart = completed(&run(&mut client, trim(1.5, 3.0, pb::CopyMode::Auto)).await?);
    assert!(
        smart.copied,
        "everything after the keyframe at 2 s is copied"
    );
    assert!(
        (smart.reencoded_seconds - 0.5).abs() < 0.01,
        "re-encoded {} s",
        smart.reencoded_seconds
    );
    let (_dir, result) = download(&mut client, &smart.key).await?;
    let packets = video_packets(&result)?;
    assert_eq!(packets.len(), 45, "1.5 s at 30 fps, frame-exact");
    assert!(
        packets[0].keyframe,
        "the re-encoded head opens on a keyframe"
    );
    assert!(
        packets[..15].iter().all(|p| !source.contains(p)),
        "the head is newly encoded"
    );
    assert_eq!(
        packets[15..],
        source[60..90],
        "the rest is the source's packets"
    );
    let info = media::probe(&result)?;
    assert!(
        (info.duration_seconds - 1.5).abs() <= 0.05,
        "duration {}",
        info.duration_seconds
    );

    let never = completed(&run(&mut client, trim(1.5, 3.0, pb::CopyMode::Never)).await?);
    assert!(!never.copied && never.reencoded_seconds == 0.0, "{never:?}");
    let required = run(&mut client, trim(1.5, 3.0, pb::CopyMode::Required)).await?;
    assert_eq!(required.state(), pb::JobState::Failed);
    assert!(
        required
            .error
            .contains("between keyframes at 0.000 s and 2.000 s"),
        "{}",
        required.error
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_is_burned_in_with_merge_fields() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    client
        .upload_file(clips::six_second_clip(), "in/clip.mp4")
        .await?;
    let mut job_spec = spec(Operation::AddText(pb::AddText {
        input: Some(asset_source("in/clip.mp4")),
        overlays: vec![pb::TextOverlay {
            text: "{{city}} {{temp}}".into(),
            box_color: "#000000a0".into(),
            ..Default::default()
        }],
        duration_seconds: 0.0,
    }));
    job_spec.fields = [("city", "Oslo"), ("temp", "21°C")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let job = run(&mut client, job_spec).await?;
    let Some(Operation::AddText(stored)) = job.spec.as_ref().and_then(|s| s.operation.clone())
    else {
        panic!("spec lost")
    };
    assert_eq!(stored.overlays[0].text, "Oslo 21°C");
    let output = completed(&job);
    let dir = tempfile::tempdir()?;
    let local = dir.path().join("text.mp4");
    client.download_file(&output.key, &local).await?;
    let info = media::probe(&local)?;
    assert!((info.duration_seconds - 6.0).abs() <= 0.1);
    assert_eq!(info.video.map(|v| (v.width, v.height)), Some((320, 240)));

    // The text (on a dark box) is at the bottom centre, and only there.
    let frame = |path: &std::path::Path| media::rgb_frame_at(path, 1.0, Duration::from_secs(10));
    let (before, after) = (frame(clips::six_second_clip())?, frame(&local)?);
    let change = |rows: std::ops::Range<usize>| {
        let per_row = before.width * 3;
        let bytes = rows.len() * per_row;
        let total: u64 = (rows.start * per_row..rows.end * per_row)
            .map(|i| u64::from(before.data[i].abs_diff(after.data[i])))
            .sum();
        total as f64 / bytes as f64
    };
    let (bottom, top) = (change(180..235), change(5..60));
    assert!(
        bottom > 4.0 * top.max(1.0),
        "text not found at the bottom: bottom {bottom}, top {top}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_is_extracted_to_opus_and_copied_to_m4a() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    client
        .upload_file(clips::six_second_clip(), "in/clip.mp4")
        .await?;
    let extract = |container: pb::Container| pb::JobSpec {
        output: Some(pb::OutputSpec {
            container: container as i32,
            ..Default::default()
        }),
        ..spec(Operation::ExtractAudio(pb::ExtractAudio {
            input: Some(asset_source("in/clip.mp4")),
        }))
    };
    let opus = completed(&run(&mut client, extract(pb::Container::Opus)).await?);
    assert!(opus.key.ends_with(".opus"));
    let info = probe_output(&mut client, &opus.key).await?;
    assert!(info.video.is_none());
    assert_eq!(info.audio.map(|a| a.codec), Some("opus".into()));
    assert!((info.duration_seconds - 6.0).abs() <= 0.1);

    let m4a = completed(&run(&mut client, extract(pb::Container::M4a)).await?);
    assert!(m4a.copied, "AAC goes into M4A without re-encoding");
    let info = probe_output(&mut client, &m4a.key).await?;
    assert_eq!(info.audio.map(|a| a.codec), Some("aac".into()));

    upload_clip(&mut client, clip(1.0, 160, 120, 30, false), "in/silent.mp4").await?;
    let mut silent = extract(pb::Container::Opus);
    if let Some(Operation::ExtractAudio(op)) = silent.operation.as_mut() {
        op.input = Some(asset_source("in/silent.mp4"));
    }
    let failed = run(&mut client, silent).await?;
    assert_eq!(failed.state(), pb::JobState::Failed);
    assert!(failed.error.contains("in/silent.mp4"), "{}", failed.error);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnails_are_taken_at_each_time() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    client
        .upload_file(clips::six_second_clip(), "in/clip.mp4")
        .await?;
    let job_spec = pb::JobSpec {
        output: Some(pb::OutputSpec {
            container: pb::Container::Png as i32,
            width: 160,
            ..Default::default()
        }),
        ..spec(Operation::Thumbnail(pb::Thumbnail {
            input: Some(asset_source("in/clip.mp4")),
            times_seconds: vec![0.5, 3.0, 5.5],
        }))
    };
    let output = completed(&run(&mut client, job_spec).await?);
    assert_eq!(output.keys.len(), 3);
    assert!(output.keys.iter().all(|key| key.ends_with(".png")));
    for key in &output.keys {
        let info = probe_output(&mut client, key).await?;
        assert_eq!(info.video.map(|v| (v.width, v.height)), Some((160, 120)));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_image_and_fields_become_a_video() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    // A background image, made here from a generated clip.
    let dir = tempfile::tempdir()?;
    let image = still_image(dir.path())?;
    client.upload_file(&image, "in/background.png").await?;
    client
        .upload_file(clips::six_second_clip(), "in/clip.mp4")
        .await?;

    let weather = |input: &str, seconds: f64| {
        let mut job_spec = spec(Operation::AddText(pb::AddText {
            input: Some(asset_source(input)),
            overlays: vec![pb::TextOverlay {
                text: "{{city}} {{temp}}".into(),
                position: pb::Position::Center as i32,
                ..Default::default()
            }],
            duration_seconds: seconds,
        }));
        job_spec.fields = [("city", "Oslo"), ("temp", "21°C")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        job_spec
    };
    let output = completed(&run(&mut client, weather("in/background.png", 3.0)).await?);
    let info = probe_output(&mut client, &output.key).await?;
    assert!(
        (info.duration_seconds - 3.0).abs() <= 0.1,
        "duration {}",
        info.duration_seconds
    );
    assert_eq!(
        info.video.map(|v| (v.codec, v.width, v.height)),
        Some(("h264".into(), 320, 240))
    );

    let no_duration = run(&mut client, weather("in/background.png", 0.0)).await?;
    assert_eq!(no_duration.state(), pb::JobState::Failed);
    assert!(
        no_duration.error.contains("in/background.png")
            && no_duration.error.contains("duration_seconds"),
        "{}",
        no_duration.error
    );
    let video_with_duration = run(&mut client, weather("in/clip.mp4", 3.0)).await?;
    assert_eq!(video_with_duration.state(), pb::JobState::Failed);
    assert!(
        video_with_duration.error.contains("in/clip.mp4"),
        "{}",
        video_with_duration.error
    );
    let trimmed_image = spec(Operation::Trim(pb::Trim {
        input: Some(asset_source("in/background.png")),
        start_seconds: 0.5,
        end_seconds: 1.0,
    }));
    let trimmed_image = run(&mut client, trimmed_image).await?;
    assert_eq!(trimmed_image.state(), pb::JobState::Failed);
    assert!(
        trimmed_image
            .error
            .contains("in/background.png: is a still image"),
        "{}",
        trimmed_image.error
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webm_output_is_encoded_with_vpx_and_opus() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    for key in ["in/a.mp4", "in/b.mp4"] {
        upload_clip(&mut client, clip(1.0, 320, 240, 30, true), key).await?;
    }
    let mut job_spec = concat(&["in/a.mp4", "in/b.mp4"], pb::CopyMode::Auto);
    job_spec.output = Some(pb::OutputSpec {
        container: pb::Container::Webm as i32,
        video_codec: pb::VideoCodec::Vp8 as i32,
        ..Default::default()
    });
    let output = completed(&run(&mut client, job_spec).await?);
    assert!(
        output.key.ends_with(".webm") && !output.copied,
        "{output:?}"
    );
    let info = probe_output(&mut client, &output.key).await?;
    assert_eq!(info.video.map(|v| v.codec), Some("vp8".into()));
    assert_eq!(info.audio.map(|a| a.codec), Some("opus".into()));
    assert!(
        (info.duration_seconds - 2.0).abs() <= 0.15,
        "duration {}",
        info.duration_seconds
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_joins_clips_stills_colours_music_and_subtitles() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    upload_clip(&mut client, clip(1.5, 320, 240, 30, true), "in/a.mp4").await?;
    upload_clip(&mut client, clip(1.0, 640, 360, 25, false), "in/b.mp4").await?;
    let dir = tempfile::tempdir()?;
    client
        .upload_file(&still_image(dir.path())?, "in/still.png")
        .await?;
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut progress = |_| {};
    let mut control = media::Control::new(&cancel, Duration::from_secs(10), &mut progress);
    let music = dir.path().join("music.m4a");
    media::extract_audio(
        clips::six_second_clip(),
        &music,
        media::AudioFormat::M4a,
        None,
        &mut control,
    )?;
    client.upload_file(&music, "in/music.m4a").await?;
    let srt = dir.path().join("subs.srt");
    std::fs::write(&srt, "1\n00:00:00,200 --> 00:00:01,000\nHello\n")?;
    client.upload_file(&srt, "in/subs.srt").await?;

    let media_clip = |key: &str| pb::Clip {
        source: Some(pb::clip::Source::Media(asset_source(key))),
        ..Default::default()
    };
    let transition = |kind: pb::TransitionKind, seconds: f64| {
        Some(pb::Transition {
            kind: kind as i32,
            duration_seconds: seconds,
        })
    };
    let edit = |crossfade: f64| pb::Edit {
        clips: vec![
            pb::Clip {
                in_seconds: 0.25,
                out_seconds: 1.25,
                ..media_clip("in/a.mp4")
            },
            pb::Clip {
                transition: transition(pb::TransitionKind::Crossfade, crossfade),
                ..media_clip("in/b.mp4")
            },
            pb::Clip {
                duration_seconds: 1.0,
                transition: transition(pb::TransitionKind::Fade, 0.2),
                ..media_clip("in/still.png")
            },
            pb::Clip {
                source: Some(pb::clip::Source::Color("#204080".into())),
                duration_seconds: 0.5,
                ..Default::default()
            },
        ],
        overlays: vec![pb::TextOverlay {
            text: "{{city}}".into(),
            position: pb::Position::TopLeft as i32,
            ..Default::default()
        }],
        audio: vec![pb::AudioTrack {
            source: Some(asset_source("in/music.m4a")),
            volume: Some(0.5),
            fade_out_seconds: 0.5,
            ..Default::default()
        }],
        subtitles: Some(pb::Subtitles {
            srt: Some(pb::subtitles::Srt::File(asset_source("in/subs.srt"))),
            ..Default::default()
        }),
    };
    let job = |edit: pb::Edit| pb::JobSpec {
        output: Some(pb::OutputSpec {
            container: pb::Container::Mkv as i32,
            video_codec: pb::VideoCodec::Vp9 as i32,
            audio_codec: pb::AudioCodec::Opus as i32,
            width: 480,
            height: 270,
            fps: 24,
            ..Default::default()
        }),
        fields: [("city".to_string(), "Oslo".to_string())].into(),
        ..spec(Operation::Edit(edit))
    };

    let output = completed(&run(&mut client, job(edit(0.3))).await?);
    assert!(output.key.ends_with(".mkv"), "{output:?}");
    let info = probe_output(&mut client, &output.key).await?;
    // 1 s + 1 s - 0.3 s crossfade + 1 s still + 0.5 s colour.
    assert!(
        (info.duration_seconds - 3.2).abs() <= 0.15,
        "duration {}",
        info.duration_seconds
    );
    let video = info.video.expect("video");
    assert_eq!(
        (video.codec.as_str(), video.width, video.height, video.fps),
        ("vp9", 480, 270, 24.0)
    );
    assert_eq!(info.audio.map(|a| a.codec), Some("opus".into()));

    // A crossfade longer than the clip it enters fails, naming the clip.
    let too_long = run(&mut client, job(edit(1.5))).await?;
    assert_eq!(too_long.state(), pb::JobState::Failed);
    assert!(too_long.error.contains("clips[1]"), "{}", too_long.error);

    // A subtitle file that is not SRT fails, naming the asset.
    std::fs::write(&srt, "not subtitles at all")?;
    client.upload_file(&srt, "in/subs.srt").await?;
    let bad_srt = run(&mut client, job(edit(0.3))).await?;
    assert_eq!(bad_srt.state(), pb::JobState::Failed);
    assert!(bad_srt.error.contains("in/subs.srt"), "{}", bad_srt.error);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_size_fit_and_rate_apply_to_simple_operations() -> anyhow::Result<()> {
    let cluster = TestCluster::start().await?;
    let mut client = cluster.client(KEY_A).await?;
    client
        .upload_file(clips::six_second_clip(), "in/clip.mp4")
        .await?;
    let mut trim = spec(Operation::Trim(pb::Trim {
        input: Some(asset_source("in/clip.mp4")),
        start_seconds: 0.0,
        end_seconds: 2.0,
    }));
    trim.output = Some(pb::OutputSpec {
        width: 200,
        height: 200,
        fit: pb::Fit::Cover as i32,
        fps: 15,
        quality: 30,
        ..Default::default()
    });
    let output = completed(&run(&mut client, trim).await?);
    // A keyframe-aligned trim would be copied; a new size forces encoding.
    assert!(!output.copied, "{output:?}");
    let info = probe_output(&mut client, &output.key).await?;
    let video = info.video.expect("video");
    assert_eq!((video.width, video.height, video.fps), (200, 200, 15.0));
    assert!(
        (info.duration_seconds - 2.0).abs() <= 0.1,
        "{}",
        info.duration_seconds
    );
    Ok(())
}
