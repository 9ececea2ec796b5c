//! Generated media for tests: small H.264/AAC clips from GStreamer's test
//! sources, made once per test process and shared.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use reelmesh_render::media::{self, TestClip};

/// A 6 s 320x240 clip with audio, the input of most tests.
pub fn six_second_clip() -> &'static Path {
    static CLIP: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &CLIP.get_or_init(|| make(6.0, 320, 240)).1
}

/// Writes a fresh 30 fps clip with audio into its own temporary directory.
pub fn make(seconds: f64, width: u32, height: u32) -> (tempfile::TempDir, PathBuf) {
    make_clip(&TestClip {
        seconds,
        width,
        height,
        fps: 30,
        audio: true,
    })
}

/// Writes a fresh clip of any shape into its own temporary directory.
pub fn make_clip(clip: &TestClip) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("clip.mp4");
    media::init().expect("gstreamer init");
    media::write_test_clip(clip, &path).expect("generate test clip");
    (dir, path)
}
