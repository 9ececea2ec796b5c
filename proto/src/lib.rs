//! The reelmesh.v1 gRPC contract: generated messages, clients and servers.
//!
//! Services depend on this crate instead of each generating their own code, so
//! the wire contract has one home.

#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("reelmesh.v1");
}

pub mod srt;

/// The encoded descriptor set of every reelmesh proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/reelmesh_descriptor.bin"));

/// Reads a colour as the API writes them, `#RRGGBB` or `#RRGGBBAA`, into
/// 0xRRGGBBAA (opaque when no alpha is given).
pub fn parse_color(color: &str) -> Option<u32> {
    let hex = color.strip_prefix('#')?;
    if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let value = u32::from_str_radix(hex, 16).ok()?;
    match hex.len() {
        6 => Some(value << 8 | 0xff),
        8 => Some(value),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn colors_parse_with_and_without_alpha() {
        assert_eq!(super::parse_color("#ff000080"), Some(0xff000080));
        assert_eq!(super::parse_color("#00ff00"), Some(0x00ff00ff));
        assert_eq!(super::parse_color("#abc"), None);
        assert_eq!(super::parse_color("#+bcdef"), None);
        assert_eq!(super::parse_color("00ff00"), None);
    }
}
