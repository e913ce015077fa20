//! Media kinds by file extension, and their MIME types.
//!
//! Owns the mapping extension → (image | video | audio, MIME type, audio format). The lists
//! follow the formats Model Studio documents for Qwen-VL (images: BMP, JPEG, PNG, TIFF, WEBP,
//! HEIC; videos: MP4, AVI, MKV, MOV, FLV, WMV) and for audio input on Qwen-Audio/Omni, plus a
//! few widely accepted neighbours (webm, m4a, opus). The model has the last word: a format it
//! refuses comes back as a 400 with the service's own message, so a slightly generous list
//! costs one failed row, while a too strict one would block files the model accepts.
//! GIF is left out: it is not documented for Qwen-VL and animated GIFs are ambiguous
//! (image or video?), so it fails early as `unsupported_media` instead.
//!
//! A URL's kind comes from its path alone: `strip_query` is the one place its query and
//! fragment are set aside (`…/cat.png?Expires=…`), for `run` and `validate` alike.
//!
//! Deliberately not here: sniffing file contents. The extension is what the user controls
//! and what the service sees in the object key.

use std::path::Path;

/// What a file is, as far as the model APIs' content parts are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Image,
    Video,
    Audio,
}

/// (extension, kind, MIME type). Lowercase extensions; lookups lowercase first.
const TABLE: &[(&str, MediaKind, &str)] = &[
    ("jpg", MediaKind::Image, "image/jpeg"),
    ("jpeg", MediaKind::Image, "image/jpeg"),
    ("jpe", MediaKind::Image, "image/jpeg"),
    ("png", MediaKind::Image, "image/png"),
    ("bmp", MediaKind::Image, "image/bmp"),
    ("webp", MediaKind::Image, "image/webp"),
    ("tif", MediaKind::Image, "image/tiff"),
    ("tiff", MediaKind::Image, "image/tiff"),
    ("heic", MediaKind::Image, "image/heic"),
    ("mp4", MediaKind::Video, "video/mp4"),
    ("avi", MediaKind::Video, "video/x-msvideo"),
    ("mkv", MediaKind::Video, "video/x-matroska"),
    ("mov", MediaKind::Video, "video/quicktime"),
    ("flv", MediaKind::Video, "video/x-flv"),
    ("wmv", MediaKind::Video, "video/x-ms-wmv"),
    ("webm", MediaKind::Video, "video/webm"),
    ("mp3", MediaKind::Audio, "audio/mpeg"),
    ("wav", MediaKind::Audio, "audio/wav"),
    ("m4a", MediaKind::Audio, "audio/mp4"),
    ("aac", MediaKind::Audio, "audio/aac"),
    ("amr", MediaKind::Audio, "audio/amr"),
    ("flac", MediaKind::Audio, "audio/flac"),
    ("ogg", MediaKind::Audio, "audio/ogg"),
    ("opus", MediaKind::Audio, "audio/opus"),
];

fn lookup(path: &Path) -> Option<&'static (&'static str, MediaKind, &'static str)> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    TABLE.iter().find(|(e, _, _)| *e == ext)
}

impl MediaKind {
    /// By extension, case-insensitively. `None` for anything not in the table.
    pub fn from_path(path: &Path) -> Option<MediaKind> {
        lookup(path).map(|(_, kind, _)| *kind)
    }

    /// By the extension of the URL's path, its query and fragment set aside.
    pub fn from_url(url: &str) -> Option<MediaKind> {
        MediaKind::from_path(Path::new(strip_query(url)))
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Video => "video",
            MediaKind::Audio => "audio",
        }
    }
}

/// The path part of an `http(s)://` or `oss://` URL, where its extension is: without any
/// query string or fragment (`…/cat.png?Expires=…`).
fn strip_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// The MIME type for the upload form; `application/octet-stream` when unknown.
pub fn content_type_for(path: &Path) -> &'static str {
    lookup(path).map_or("application/octet-stream", |(_, _, mime)| *mime)
}

/// The audio `format` that compatible mode's `input_audio` part wants: the lowercase
/// extension (`mp3`, `wav`, …). `None` for non-audio.
pub fn audio_format(path: &Path) -> Option<String> {
    match lookup(path)? {
        (ext, MediaKind::Audio, _) => Some((*ext).to_owned()),
        _ => None,
    }
}

/// One media input of a model request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub kind: MediaKind,
    /// `oss://…` from an upload, or an `http(s)://` URL given to the model as is.
    pub url: String,
    /// Audio format from the extension, for compatible mode's `input_audio`.
    pub format: Option<String>,
}

impl Media {
    /// Media for a URL used as is; kind and format come from the URL's own path. `None` if
    /// its extension is unknown. (A local file is checked before its upload gives it a URL,
    /// so its `Media` is built from [`MediaKind::from_path`] and [`audio_format`].)
    pub fn for_url(url: impl Into<String>) -> Option<Media> {
        let url = url.into();
        let path = Path::new(strip_query(&url));
        let kind = MediaKind::from_path(path)?;
        let format = audio_format(path);
        Some(Media { kind, url, format })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_extension_case_insensitive() {
        assert_eq!(
            MediaKind::from_path(Path::new("a/b/Cat.JPG")),
            Some(MediaKind::Image)
        );
        assert_eq!(
            MediaKind::from_path(Path::new("x.heic")),
            Some(MediaKind::Image)
        );
        assert_eq!(
            MediaKind::from_path(Path::new("clip.MoV")),
            Some(MediaKind::Video)
        );
        assert_eq!(
            MediaKind::from_path(Path::new("talk.mp3")),
            Some(MediaKind::Audio)
        );
        assert_eq!(MediaKind::from_path(Path::new("anim.gif")), None);
        assert_eq!(MediaKind::from_path(Path::new("README")), None);
        assert_eq!(
            MediaKind::from_path(Path::new(".png")),
            None,
            "a dotfile has no extension"
        );
    }

    #[test]
    fn mime_types() {
        assert_eq!(content_type_for(Path::new("a.jpeg")), "image/jpeg");
        assert_eq!(content_type_for(Path::new("a.WAV")), "audio/wav");
        assert_eq!(
            content_type_for(Path::new("a.bin")),
            "application/octet-stream"
        );
    }

    #[test]
    fn media_for_files_and_urls() {
        assert_eq!(
            audio_format(Path::new("dir/Voice.M4A")).as_deref(),
            Some("m4a")
        );
        assert_eq!(audio_format(Path::new("dir/cat.png")), None);
        let m = Media::for_url("oss://k/Voice.M4A").unwrap();
        assert_eq!(
            (m.kind, m.format.as_deref()),
            (MediaKind::Audio, Some("m4a"))
        );
        let m = Media::for_url("https://example.com/v/clip.mp4?sig=abc.png#t=1").unwrap();
        assert_eq!(m.kind, MediaKind::Video);
        assert_eq!(m.format, None);
        assert!(Media::for_url("https://example.com/page").is_none());
        assert_eq!(
            Media::for_url("oss://dir/a_b.png").map(|m| m.kind),
            Some(MediaKind::Image)
        );
    }
}
