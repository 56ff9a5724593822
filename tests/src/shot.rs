//! Terminal screenshots: a screen captured with its colours (`tmux capture-pane -e -p`) drawn
//! into a grid of cells the size of the terminal, then as SVG (one rectangle per coloured
//! background, one glyph per cell, DejaVu Sans Mono) rendered to PNG. Used by
//! `screenshots/make.sh` through the `shot` binary.

use ansi_to_tui::IntoText;
use anyhow::{Context, Result, anyhow};
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier};
use ratatui::widgets::{Paragraph, Widget};
use std::fmt::Write as _;

/// DejaVu Sans Mono at 14.6 px: advance 0.602 em, ascent + descent 1.164 em = 17 px, so that
/// box-drawing lines join from row to row as in a terminal.
const FONT_PX: f32 = 14.6;
const CELL_W: f32 = FONT_PX * 0.602;
const CELL_H: f32 = 17.0;
const BASELINE: f32 = FONT_PX * 0.928;
const PAD: f32 = 8.0;
const BACKGROUND: &str = "#1c1c1c";
const FOREGROUND: &str = "#d0d0d0";

/// The xterm 256-colour palette entry `i`.
fn indexed(i: u8) -> String {
    const BASE: [&str; 16] = [
        "#000000", "#cd3131", "#0dbc79", "#e5e510", "#2472c8", "#bc3fbc", "#11a8cd", "#e5e5e5",
        "#666666", "#f14c4c", "#23d18b", "#f5f543", "#3b8eea", "#d670d6", "#29b8db", "#ffffff",
    ];
    match i {
        0..=15 => BASE[i as usize].to_string(),
        16..=231 => {
            let i = i - 16;
            let level = |v: u8| if v == 0 { 0 } else { 55 + v * 40 };
            format!(
                "#{:02x}{:02x}{:02x}",
                level(i / 36),
                level((i / 6) % 6),
                level(i % 6)
            )
        }
        _ => {
            let g = 8 + (i - 232) * 10;
            format!("#{g:02x}{g:02x}{g:02x}")
        }
    }
}

fn color(c: Color) -> Option<String> {
    let i = match c {
        Color::Reset => return None,
        Color::Black => 0,
        Color::Red => 1,
        Color::Green => 2,
        Color::Yellow => 3,
        Color::Blue => 4,
        Color::Magenta => 5,
        Color::Cyan => 6,
        Color::Gray => 7,
        Color::DarkGray => 8,
        Color::LightRed => 9,
        Color::LightGreen => 10,
        Color::LightYellow => 11,
        Color::LightBlue => 12,
        Color::LightMagenta => 13,
        Color::LightCyan => 14,
        Color::White => 15,
        Color::Indexed(i) => i,
        Color::Rgb(r, g, b) => return Some(format!("#{r:02x}{g:02x}{b:02x}")),
    };
    Some(indexed(i))
}

fn escape(ch: &str) -> String {
    ch.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The captured screen as a `cols`×`rows` grid of cells.
pub fn screen(ansi: &[u8], cols: u16, rows: u16) -> Result<Buffer> {
    let text = ansi
        .into_text()
        .map_err(|e| anyhow!("cannot read the captured screen: {e}"))?;
    let area = Rect::new(0, 0, cols, rows);
    let mut buf = Buffer::empty(area);
    Paragraph::new(text).render(area, &mut buf);
    Ok(buf)
}

/// The grid as an SVG picture.
pub fn svg(buf: &Buffer) -> String {
    let area = buf.area;
    let width = area.width as f32 * CELL_W + 2.0 * PAD;
    let height = area.height as f32 * CELL_H + 2.0 * PAD;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}"><rect width="100%" height="100%" fill="{BACKGROUND}"/>"#
    );
    let mut glyphs = String::new();
    // pixel edges of column x, on whole pixels so that neighbouring backgrounds leave no seam
    let edge = |x: u16| (PAD + x as f32 * CELL_W).round();
    for y in 0..area.height {
        let py = PAD + y as f32 * CELL_H;
        // backgrounds in runs of one colour
        let mut run: Option<(u16, String)> = None;
        for x in 0..=area.width {
            let bg = buf
                .cell((x, y))
                .filter(|_| x < area.width)
                .and_then(|cell| {
                    let (fg, bg) = (color(cell.fg), color(cell.bg));
                    if cell.modifier.contains(Modifier::REVERSED) {
                        Some(fg.unwrap_or_else(|| FOREGROUND.into()))
                    } else {
                        bg
                    }
                });
            let same = matches!((&run, &bg), (Some((_, a)), Some(b)) if a == b);
            if !same {
                if let Some((start, colour)) = run.take() {
                    let _ = write!(
                        out,
                        r#"<rect x="{}" y="{py:.0}" width="{}" height="{CELL_H}" fill="{colour}"/>"#,
                        edge(start),
                        edge(x) - edge(start)
                    );
                }
                run = bg.map(|b| (x, b));
            }
        }
        for x in 0..area.width {
            let Some(cell) = buf.cell((x, y)) else {
                continue;
            };
            let sym = cell.symbol();
            if sym.trim().is_empty() {
                continue;
            }
            let fg = if cell.modifier.contains(Modifier::REVERSED) {
                color(cell.bg).unwrap_or_else(|| BACKGROUND.into())
            } else {
                color(cell.fg).unwrap_or_else(|| FOREGROUND.into())
            };
            let mut attrs = String::new();
            if cell.modifier.contains(Modifier::BOLD) {
                attrs.push_str(r#" font-weight="bold""#);
            }
            if cell.modifier.contains(Modifier::DIM) {
                attrs.push_str(r#" fill-opacity="0.6""#);
            }
            if cell.modifier.contains(Modifier::ITALIC) {
                attrs.push_str(r#" font-style="italic""#);
            }
            if cell.modifier.contains(Modifier::UNDERLINED) {
                attrs.push_str(r#" text-decoration="underline""#);
            }
            let _ = write!(
                glyphs,
                r#"<text x="{:.2}" y="{:.2}" fill="{fg}"{attrs}>{}</text>"#,
                PAD + x as f32 * CELL_W,
                py + BASELINE,
                escape(sym)
            );
        }
    }
    let _ = write!(
        out,
        r#"<g font-family="DejaVu Sans Mono" font-size="{FONT_PX}" xml:space="preserve">{glyphs}</g></svg>"#
    );
    out
}

/// Renders an SVG picture to PNG with the system's fonts.
pub fn png(svg: &str) -> Result<Vec<u8>> {
    let mut options = resvg::usvg::Options::default();
    options.fontdb_mut().load_system_fonts();
    if options.fontdb.is_empty() {
        anyhow::bail!("no fonts found: apt-get install fonts-dejavu-core");
    }
    let tree = resvg::usvg::Tree::from_str(svg, &options).context("cannot read the SVG")?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| anyhow!("empty picture"))?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().context("cannot encode the PNG")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coloured_screen_becomes_a_png_with_its_colours() {
        let ansi =
            b"\x1b[1;32mprimary\x1b[0m \x1b[41m down \x1b[0m\n\xe2\x94\x82 box \x1b[7mrev\x1b[0m";
        let buf = screen(ansi, 20, 3).unwrap();
        assert_eq!(buf.cell((0, 0)).unwrap().symbol(), "p");
        assert_eq!(buf.cell((0, 0)).unwrap().fg, Color::Green);
        assert_eq!(buf.cell((8, 0)).unwrap().bg, Color::Red);
        assert_eq!(buf.cell((0, 1)).unwrap().symbol(), "│");
        let svg = svg(&buf);
        assert!(
            svg.contains(r##"fill="#0dbc79" font-weight="bold">p</text>"##),
            "{svg}"
        );
        assert!(svg.contains(r##"fill="#cd3131""##));
        let png = png(&svg).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let pixmap = resvg::tiny_skia::Pixmap::decode_png(&png).unwrap();
        assert_eq!(pixmap.width(), (20.0 * CELL_W + 2.0 * PAD).round() as u32);
        // glyphs were drawn: more than the background's colour is there
        let first = pixmap.pixels()[0];
        assert!(pixmap.pixels().iter().any(|p| *p != first));
    }
}
