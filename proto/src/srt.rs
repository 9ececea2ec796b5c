//! SubRip (SRT) subtitles as clients send them: a forgiving parser shared
//! by the gateway (to refuse a bad file at submit) and render (to draw it).

/// One subtitle: shown from `start` until `end` (seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Cue {
    pub start: f64,
    pub end: f64,
    pub text: String,
}

/// Why an SRT text could not be read, naming the cue.
#[derive(Debug, Clone, PartialEq)]
pub struct SrtError {
    /// 1-based position of the cue in the file.
    pub cue: usize,
    pub reason: String,
}

/// Parses SRT text: blocks separated by blank lines, each an optional
/// index line, a `HH:MM:SS,mmm --> HH:MM:SS,mmm` line and text lines.
/// Accepts a BOM, CRLF line ends and `.` as the millisecond separator,
/// as players do; cues come back sorted by start time.
pub fn parse_srt(text: &str) -> Result<Vec<Cue>, SrtError> {
    let text = text.trim_start_matches('\u{feff}').replace("\r\n", "\n");
    let mut cues = Vec::new();
    let blocks = text.split("\n\n").map(str::trim).filter(|b| !b.is_empty());
    for (index, block) in blocks.enumerate() {
        let fail = |reason: String| SrtError {
            cue: index + 1,
            reason,
        };
        let mut lines = block.lines().skip_while(|line| !line.contains("-->"));
        let timing = lines
            .next()
            .ok_or_else(|| fail("has no \"start --> end\" line".into()))?;
        let (start, end) = parse_timing(timing).map_err(fail)?;
        let body: Vec<&str> = lines.collect();
        cues.push(Cue {
            start,
            end,
            text: body.join("\n"),
        });
    }
    cues.sort_by(|a, b| a.start.total_cmp(&b.start));
    Ok(cues)
}

impl std::fmt::Display for SrtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cue {}: {}", self.cue, self.reason)
    }
}

impl std::error::Error for SrtError {}

fn parse_timing(line: &str) -> Result<(f64, f64), String> {
    let (start, end) = line
        .split_once("-->")
        .ok_or_else(|| format!("bad timing line {line:?}"))?;
    // Position hints ("X1:...") may follow the end time.
    let end = end.split_whitespace().next().unwrap_or_default();
    let (start, end) = (parse_time(start.trim())?, parse_time(end)?);
    if end <= start {
        return Err(format!("ends at {end} s, not after its start at {start} s"));
    }
    Ok((start, end))
}

/// `HH:MM:SS,mmm` (or `.mmm`) in seconds.
fn parse_time(text: &str) -> Result<f64, String> {
    let bad = || format!("bad time {text:?} (want HH:MM:SS,mmm)");
    let (clock, millis) = text.split_once([',', '.']).ok_or_else(bad)?;
    let parts: Vec<&str> = clock.split(':').collect();
    let [hours, minutes, seconds] = parts.as_slice() else {
        return Err(bad());
    };
    let number = |part: &str| part.trim().parse::<u32>().map_err(|_| bad());
    let (h, m, s, ms) = (
        number(hours)?,
        number(minutes)?,
        number(seconds)?,
        number(millis)?,
    );
    if m >= 60 || s >= 60 || ms >= 1000 {
        return Err(bad());
    }
    Ok(f64::from(h) * 3600.0 + f64::from(m) * 60.0 + f64::from(s) + f64::from(ms) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\u{feff}1\r\n00:00:01,000 --> 00:00:02,500\r\nHello\r\nthere\r\n\r\n2\r\n00:00:03.000 --> 00:00:04,000 X1:10\r\nBye & <b>\r\n";

    #[test]
    fn reads_cues_with_crlf_bom_and_dots() {
        let cues = parse_srt(SAMPLE).expect("parse");
        assert_eq!(
            cues,
            vec![
                Cue {
                    start: 1.0,
                    end: 2.5,
                    text: "Hello\nthere".into()
                },
                Cue {
                    start: 3.0,
                    end: 4.0,
                    text: "Bye & <b>".into()
                },
            ]
        );
    }

    #[test]
    fn errors_name_the_cue() {
        let err = parse_srt(
            "1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:05,000 --> 00:00:04,000\nbackwards\n",
        )
        .expect_err("backwards");
        assert_eq!(err.cue, 2);
        assert!(err.reason.contains("not after its start"), "{err}");
        let err = parse_srt("1\n00:61:00,000 --> 00:62:00,000\nx\n").expect_err("minutes");
        assert!(err.to_string().starts_with("cue 1: bad time"), "{err}");
        let err = parse_srt("just words\n").expect_err("no timing");
        assert!(err.reason.contains("-->"), "{err}");
    }
}
