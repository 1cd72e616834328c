//! SVG byte map of a layout: both forms side by side, one row per 64-byte line, one cell per
//! 8 bytes, so an 8-byte PKRU and 8 KiB of tiles are both visible. Legacy area fields, the
//! header, each component, holes (bytes no component uses) and alignment padding are drawn
//! differently, and a legend lists every component's offsets and size.
//!
//! Readability rules, checked over every fixture CPU by the tests below: every component
//! present has its own colour (a maximum-contrast palette, assigned in component order, so no
//! two components of one picture share a colour); no two labels overlap and every label stays
//! inside the picture (each label is placed only where its box is free, and shortened or left
//! out where it does not fit — the legend and the hover titles still name everything); a form
//! that cannot be laid out says why in its column.

use std::collections::BTreeMap;
use std::fmt::Write;

use xstate::components::Component;
use xstate::layout::{Form, FormLayout, Placement, EXTENDED_START};

use crate::cmd::layout::Report;

const CELL_BYTES: u32 = 8;
const CELLS_PER_ROW: u32 = 8;
const ROW_BYTES: u32 = CELL_BYTES * CELLS_PER_ROW;
const CELL_W: u32 = 40;
const COL_W: u32 = CELL_W * CELLS_PER_ROW;
const MARGIN: u32 = 60;
const COL_GAP: u32 = 90;
const TOP: u32 = 70;

/// Advance of one character of the monospace font, as a fraction of the font size (0.6 em
/// for DejaVu Sans Mono and Liberation Mono; a little more for safety).
const CHAR_EM: f32 = 0.62;

/// Kenneth Kelly's colours of maximum contrast (white, black and grey left out: they are the
/// background, the text and the header), then two more; component i of a picture gets
/// colour i.
/// The colours closest to an earlier one come last, where only CPUs with more than 15
/// components reach them.
const PALETTE: [&str; 21] = [
    "#0067a5", "#f38400", "#8db600", "#f3c300", "#875692", "#e68fac", "#be0032", "#a1caf1",
    "#c2b280", "#008856", "#604e97", "#882d17", "#b3446c", "#00a6a6", "#2b3d26", "#e25822",
    "#5a5a00", "#f6a600", "#dcd300", "#f99379", "#654522",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Black or white text, whichever reads on `fill` (a `#rrggbb` colour).
fn ink(fill: &str) -> &'static str {
    let c = |i: usize| {
        fill.get(i..i + 2)
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .unwrap_or(255) as f32
    };
    if fill.len() == 7 && 0.299 * c(1) + 0.587 * c(3) + 0.114 * c(5) < 120.0 {
        "#fff"
    } else {
        "#000"
    }
}

/// Width in pixels of `text` at `size`.
fn text_w(text: &str, size: u32) -> u32 {
    (text.chars().count() as f32 * size as f32 * CHAR_EM).ceil() as u32
}

/// The labels placed so far; a new one goes in only where its box is free.
struct Labels {
    boxes: Vec<(u32, u32, u32, u32)>,
    out: String,
}

impl Labels {
    /// Places `text` with its baseline at `y`, starting at `x` (or ending there when `end`);
    /// returns false (and draws nothing) when its box would overlap another label's.
    #[allow(clippy::too_many_arguments)]
    fn put(
        &mut self,
        x: u32,
        y: u32,
        size: u32,
        text: &str,
        end: bool,
        fill: &str,
        extra: &str,
    ) -> bool {
        let w = text_w(text, size);
        let x0 = if end { x.saturating_sub(w) } else { x };
        // Ascent about 0.8 em above the baseline, descent 0.2 em below.
        let b = (
            x0,
            y.saturating_sub(size * 4 / 5),
            x0 + w,
            y + size.div_ceil(5),
        );
        if self
            .boxes
            .iter()
            .any(|o| b.0 < o.2 && o.0 < b.2 && b.1 < o.3 && o.1 < b.3)
        {
            return false;
        }
        self.boxes.push(b);
        let _ = writeln!(
            self.out,
            r#"<text x="{x}" y="{y}" font-size="{size}"{} fill="{fill}"{extra}>{}</text>"#,
            if end { r#" text-anchor="end""# } else { "" },
            esc(text)
        );
        true
    }
}

/// The longest prefix of `text` that fits `width` pixels at `size` (with "…" when cut), or
/// nothing when not even three characters fit.
fn fit(text: &str, width: u32, size: u32) -> Option<String> {
    if text_w(text, size) <= width {
        return Some(text.to_string());
    }
    let per = size as f32 * CHAR_EM;
    let n = (width as f32 / per).floor() as usize;
    if n < 4 {
        return None;
    }
    Some(format!("{}…", text.chars().take(n - 1).collect::<String>()))
}

/// A span of bytes to paint.
struct Span {
    start: u32,
    end: u32,
    fill: String,
    /// The word drawn on the map (empty: none).
    name: String,
    /// The hover title.
    title: String,
}

/// Paints a byte span as one rectangle per row it touches, and its name where it fits; returns
/// whether the name was placed on the map.
fn paint(out: &mut String, labels: &mut Labels, x0: u32, row_h: u32, s: &Span) -> bool {
    let mut pos = s.start;
    while pos < s.end {
        let row = pos / ROW_BYTES;
        let row_end = ((row + 1) * ROW_BYTES).min(s.end);
        let cx = (pos % ROW_BYTES) * CELL_W / CELL_BYTES;
        let w = (row_end - pos) * CELL_W / CELL_BYTES;
        let _ = writeln!(
            out,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="{}" stroke="#333" stroke-width="0.4"><title>{}</title></rect>"##,
            x0 + cx,
            TOP + row * row_h,
            w.max(1),
            row_h,
            s.fill,
            esc(&s.title)
        );
        pos = row_end;
    }
    if s.name.is_empty() {
        return true;
    }
    let ink = ink(&s.fill);
    // A span of two or more full rows: the name centred vertically in the block of full rows.
    let first_full = s.start.div_ceil(ROW_BYTES);
    let last_full = s.end / ROW_BYTES; // exclusive
    if last_full >= first_full + 2 {
        let block_h = (last_full - first_full) * row_h;
        let size = (block_h.saturating_sub(2)).min(12);
        if size >= 7 {
            if let Some(t) = fit(&s.name, COL_W - 6, size) {
                let y = TOP + first_full * row_h + block_h / 2 + size * 2 / 5;
                if labels.put(x0 + 3, y, size, &t, false, ink, "") {
                    return true;
                }
            }
        }
    }
    // Otherwise in its first row, if the row is tall enough and the name fits.
    let row = s.start / ROW_BYTES;
    let row_end = ((row + 1) * ROW_BYTES).min(s.end);
    let w = (row_end - s.start) * CELL_W / CELL_BYTES;
    let max = row_h.saturating_sub(3).min(12);
    // The whole name at the largest size that fits (down to 8 px), else shortened.
    let sized = (8..=max)
        .rev()
        .find(|&z| text_w(&s.name, z) <= w.saturating_sub(5))
        .map(|z| (z, s.name.clone()))
        .or_else(|| fit(&s.name, w.saturating_sub(5), max).map(|t| (max, t)));
    if let Some((size, t)) = sized.filter(|_| max >= 8) {
        let cx = (s.start % ROW_BYTES) * CELL_W / CELL_BYTES;
        let y = TOP + row * row_h + row_h - (row_h - size) / 2 - size / 5;
        return labels.put(x0 + cx + 3, y, size, &t, false, ink, "");
    }
    false
}

/// The name of a span the map had no room for, beside the column (right of it) at the
/// span's row or the nearest free place below, never above the previous side label (`last_y`,
/// so that the leader lines from spans in offset order do not cross).
fn side_label(
    out: &mut String,
    labels: &mut Labels,
    x0: u32,
    row_h: u32,
    s: &Span,
    last_y: &mut u32,
) {
    let row = s.start / ROW_BYTES;
    let row_end = ((row + 1) * ROW_BYTES).min(s.end);
    let span_x = x0 + (row_end - row * ROW_BYTES) * CELL_W / CELL_BYTES;
    let span_y = TOP + row * row_h + row_h / 2;
    let x = x0 + COL_W + 14;
    let first = (span_y + 3).max(*last_y + 10).max(TOP + 8);
    for y in (first..first + 120).step_by(2) {
        if labels.put(x, y, 9, &s.name, false, "#000", "") {
            let _ = writeln!(
                out,
                r##"<line x1="{span_x}" y1="{span_y}" x2="{}" y2="{}" stroke="#555" stroke-width="0.6"/>"##,
                x - 2,
                y - 3
            );
            *last_y = y;
            return;
        }
    }
}

fn legacy_spans(colors: &BTreeMap<u8, &'static str>) -> Vec<Span> {
    let c = |id: u8| colors.get(&id).copied().unwrap_or("#999999");
    let mk = |a, b, fill: &str, name: &str, title: &str| Span {
        start: a,
        end: b,
        fill: String::from(fill),
        name: String::from(name),
        title: String::from(title),
    };
    vec![
        mk(0, 24, c(0), "x87", "x87 FCW FSW FTW FOP FIP FDP (0..24)"),
        mk(24, 32, c(1), "MXCSR", "MXCSR MXCSR_MASK (24..32)"),
        mk(32, 160, c(0), "", "x87 ST0-ST7 (32..160)"),
        mk(160, 416, c(1), "sse", "sse XMM0-XMM15 (160..416)"),
        mk(416, 464, "#dddddd", "reserved", "reserved (416..464)"),
        mk(
            464,
            512,
            "#eeeeee",
            "available",
            "available to software (464..512)",
        ),
        mk(512, 520, "#c9c9c9", "XSTATE_BV", "XSTATE_BV (512)"),
        mk(520, 528, "#b9b9b9", "XCOMP_BV", "XCOMP_BV (520)"),
        mk(528, 576, "#dddddd", "header", "header reserved (528..576)"),
    ]
}

fn form_spans(fl: &FormLayout, colors: &BTreeMap<u8, &'static str>) -> Vec<Span> {
    // Without XSAVE the area is FXSAVE's 512 bytes: no header.
    let mut spans: Vec<Span> = legacy_spans(colors)
        .into_iter()
        .filter(|s| s.end <= fl.size)
        .collect();
    let mut ext: Vec<Placement> = fl
        .placements
        .iter()
        .filter(|p| p.id >= 2)
        .copied()
        .collect();
    ext.sort_by_key(|p| p.offset);
    let mut cursor = EXTENDED_START;
    let gap = |a: u32, b: u32| {
        let padding = fl.form == Form::Compacted;
        Span {
            start: a,
            end: b,
            fill: String::from(if padding { "url(#pad)" } else { "url(#hole)" }),
            name: String::new(),
            title: format!(
                "{} {a}..{b} ({} bytes)",
                if padding { "alignment padding" } else { "hole" },
                b - a
            ),
        }
    };
    for p in &ext {
        if p.offset > cursor {
            spans.push(gap(cursor, p.offset));
        }
        let name = Component::name_of(p.id);
        spans.push(Span {
            start: p.offset,
            end: p.end(),
            fill: String::from(colors.get(&p.id).copied().unwrap_or("#999999")),
            title: format!("{name} {}..{} ({} bytes)", p.offset, p.end(), p.size),
            name,
        });
        cursor = cursor.max(p.end());
    }
    if fl.size > cursor {
        let mut g = gap(cursor, fl.size);
        g.fill = String::from("url(#hole)");
        g.title = format!("hole {}..{}", cursor, fl.size);
        spans.push(g);
    }
    spans
}

/// Splits `text` into lines of at most `n` characters, at spaces where it can.
fn wrap(text: &str, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        let mut word = word.to_string();
        while word.chars().count() > n {
            if !cur.is_empty() {
                lines.push(std::mem::take(&mut cur));
            }
            lines.push(word.chars().take(n).collect());
            word = word.chars().skip(n).collect();
        }
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > n {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(&word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Renders the report's two forms as an SVG document.
pub fn render(r: &Report, source: &str) -> String {
    let forms: Vec<(&str, Result<&FormLayout, &String>)> = vec![
        ("standard", r.standard.as_ref()),
        ("compacted", r.compacted.as_ref()),
    ];
    let comps: Vec<u8> = xstate::components::bits(r.xcr0 | r.xss | 3).collect();
    let colors: BTreeMap<u8, &'static str> = comps
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, PALETTE[i % PALETTE.len()]))
        .collect();
    let max_size = forms
        .iter()
        .filter_map(|(_, f)| f.ok().map(|f| f.size))
        .max()
        .unwrap_or(512);
    let rows = max_size.div_ceil(ROW_BYTES);
    let row_h = (900 / rows.max(1)).clamp(4, 18);
    let legend_x = MARGIN + 2 * COL_W + COL_GAP + 100;
    let width = legend_x + 420;
    let height = (TOP + rows * row_h + 40).max(TOP + 40 + 18 * (comps.len() as u32 + 6));
    let mut out = String::new();
    let mut labels = Labels {
        boxes: Vec::new(),
        out: String::new(),
    };
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace">"#
    );
    out.push_str(
        r##"<defs>
<pattern id="hole" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#fff"/><line x1="0" y1="0" x2="0" y2="6" stroke="#e15759" stroke-width="2"/></pattern>
<pattern id="pad" width="4" height="4" patternUnits="userSpaceOnUse"><rect width="4" height="4" fill="#fff"/><circle cx="2" cy="2" r="1" fill="#555"/></pattern>
</defs>
<rect width="100%" height="100%" fill="#fff"/>
"##,
    );
    // The title fits the picture: a long source keeps its end (the file name).
    let tail = format!(
        ": XCR0 {:#x}, IA32_XSS {:#x}{}",
        r.xcr0,
        r.xss,
        if r.consistent {
            ""
        } else {
            " (INCONSISTENT CPUID data: see `xstate layout`)"
        }
    );
    let room = ((width - 2 * MARGIN) as f32 / (16.0 * CHAR_EM)) as usize;
    let head = "XSAVE layout of ";
    let keep = room.saturating_sub(head.len() + tail.len() + 1);
    let src: String = if source.chars().count() <= keep {
        source.to_string()
    } else {
        let skip = source.chars().count() - keep;
        format!("…{}", source.chars().skip(skip).collect::<String>())
    };
    labels.put(
        MARGIN,
        24,
        16,
        &format!("{head}{src}{tail}"),
        false,
        "#000",
        "",
    );
    for (i, (name, fl)) in forms.iter().enumerate() {
        let x0 = MARGIN + i as u32 * (COL_W + COL_GAP);
        let title = match fl {
            Ok(f) => format!("{name} form: {} bytes", f.size),
            Err(_) => format!("{name} form: cannot be drawn"),
        };
        labels.put(x0, TOP - 20, 13, &title, false, "#000", "");
        let fl = match fl {
            Ok(f) => *f,
            Err(why) => {
                // The reason, wrapped to the column.
                let n = (COL_W as f32 / (11.0 * CHAR_EM)) as usize;
                for (k, line) in wrap(why, n).iter().enumerate() {
                    labels.put(x0, TOP + 14 + 15 * k as u32, 11, line, false, "#be0032", "");
                }
                continue;
            }
        };
        labels.put(
            x0,
            TOP - 6,
            9,
            "one row = 64 bytes, one cell = 8 bytes",
            false,
            "#555",
            "",
        );
        let spans = form_spans(fl, &colors);
        let mut unnamed = Vec::new();
        for s in &spans {
            if !paint(&mut out, &mut labels, x0, row_h, s) && s.start >= EXTENDED_START {
                unnamed.push(s);
            }
        }
        // Offset marks: the end, every component start, then every 512 bytes, each where it
        // does not overlap a mark already placed.
        let mut marks: Vec<u32> = vec![fl.size];
        let mut starts: Vec<u32> = fl.placements.iter().map(|p| p.offset).collect();
        starts.sort_unstable();
        marks.extend(starts);
        marks.extend((0..fl.size).step_by(512));
        let mut seen = std::collections::BTreeSet::new();
        for m in marks {
            if !seen.insert(m) {
                continue;
            }
            let y = TOP + (m / ROW_BYTES) * row_h + 8;
            labels.put(x0 - 4, y, 9, &m.to_string(), true, "#333", "");
        }
        unnamed.sort_by_key(|s| s.start);
        let mut last_y = 0;
        for s in unnamed {
            side_label(&mut out, &mut labels, x0, row_h, s, &mut last_y);
        }
    }
    // Legend: one text element per column so the columns line up.
    let cols = [0u32, 110, 160, 240];
    for (text, dx) in ["component", "size", "standard", "compacted"]
        .iter()
        .zip(cols)
    {
        labels.put(
            legend_x + 18 + dx,
            TOP - 20,
            12,
            text,
            false,
            "#000",
            r#" font-weight="bold""#,
        );
    }
    let std = r.standard.as_ref().ok();
    let cmp = r.compacted.as_ref().ok();
    for (i, &id) in comps.iter().enumerate() {
        let y = TOP + i as u32 * 18;
        let g = r.layout.geometry(id);
        let fmt = |v: Option<u32>| v.map_or_else(|| String::from("-"), |v| v.to_string());
        let _ = writeln!(
            out,
            r##"<rect x="{legend_x}" y="{}" width="12" height="12" fill="{}" stroke="#333"/>"##,
            y, colors[&id],
        );
        let cells = [
            Component::name_of(id),
            g.size.to_string(),
            fmt(std.and_then(|s| s.offset_of(id))),
            fmt(cmp.and_then(|c| c.offset_of(id))),
        ];
        for (k, (text, dx)) in cells.iter().zip(cols).enumerate() {
            let room = cols.get(k + 1).map_or(160, |n| n - dx - 6);
            if let Some(t) = fit(text, room, 12) {
                labels.put(legend_x + 18 + dx, y + 10, 12, &t, false, "#000", "");
            }
        }
    }
    let y = TOP + comps.len() as u32 * 18 + 12;
    let extras = [
        ("#c9c9c9", "XSAVE header (512..576)"),
        ("#dddddd", "reserved bytes"),
        ("#eeeeee", "available to software (464..512)"),
        ("url(#hole)", "hole: no component in this form"),
        ("url(#pad)", "64-byte alignment padding (compacted)"),
    ];
    for (k, (fill, text)) in extras.iter().enumerate() {
        let yy = y + k as u32 * 18;
        let _ = writeln!(
            out,
            r##"<rect x="{legend_x}" y="{yy}" width="12" height="12" fill="{fill}" stroke="#333"/>"##,
        );
        labels.put(legend_x + 18, yy + 10, 12, text, false, "#000", "");
    }
    out.push_str(&labels.out);
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use xstate::cpuid::CpuidDump;

    /// Every `<text>` of a document: (x0, y0, x1, y1) of its box and its text.
    fn text_boxes(svg: &str) -> Vec<((f32, f32, f32, f32), String)> {
        let attr = |tag: &str, name: &str| -> Option<String> {
            let k = format!(" {name}=\"");
            let i = tag.find(&k)? + k.len();
            Some(tag[i..].split('"').next()?.to_string())
        };
        let mut v = Vec::new();
        let mut rest = svg;
        while let Some(i) = rest.find("<text ") {
            rest = &rest[i..];
            let close = rest.find('>').unwrap();
            let tag = &rest[..close];
            let end = rest.find("</text>").unwrap();
            let text = rest[close + 1..end]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&");
            let x: f32 = attr(tag, "x").unwrap().parse().unwrap();
            let y: f32 = attr(tag, "y").unwrap().parse().unwrap();
            let size: f32 = attr(tag, "font-size").unwrap().parse().unwrap();
            // The real advance of the monospace fonts (0.6 em), not the padded estimate.
            let w = text.chars().count() as f32 * size * 0.6;
            let x0 = if attr(tag, "text-anchor").as_deref() == Some("end") {
                x - w
            } else {
                x
            };
            v.push(((x0, y - size * 0.75, x0 + w, y + size * 0.2), text));
            rest = &rest[end..];
        }
        v
    }

    fn fixtures() -> Vec<std::path::PathBuf> {
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../xstate/tests/fixtures/cpuid");
        let mut v = Vec::new();
        for d in std::fs::read_dir(root).unwrap() {
            let d = d.unwrap().path();
            if d.is_dir() {
                for f in std::fs::read_dir(d).unwrap() {
                    v.push(f.unwrap().path());
                }
            }
        }
        v.sort();
        assert!(v.len() >= 40, "{} fixtures", v.len());
        v
    }

    fn dimension(svg: &str, name: &str) -> f32 {
        let k = format!("{name}=\"");
        let i = svg.find(&k).unwrap() + k.len();
        svg[i..].split('"').next().unwrap().parse().unwrap()
    }

    #[test]
    fn labels_never_overlap_and_fit_every_fixture_picture() {
        let mut drawn = 0;
        for path in fixtures() {
            let text = std::fs::read_to_string(&path).unwrap();
            let dump = CpuidDump::parse(&text, &path.display().to_string()).unwrap();
            let Ok(report) = Report::new(&dump, None, None) else {
                continue;
            };
            let svg = render(&report, &dump.source);
            let (w, h) = (dimension(&svg, "width"), dimension(&svg, "height"));
            let boxes = text_boxes(&svg);
            for (i, (a, ta)) in boxes.iter().enumerate() {
                assert!(
                    a.0 >= 0.0 && a.1 >= 0.0 && a.2 <= w && a.3 <= h,
                    "{}: label `{ta}` {a:?} leaves the {w}x{h} picture",
                    path.display()
                );
                for (b, tb) in &boxes[i + 1..] {
                    let overlap = a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3;
                    assert!(
                        !overlap,
                        "{}: labels `{ta}` {a:?} and `{tb}` {b:?} overlap",
                        path.display()
                    );
                }
            }
            // Every component present has a colour of its own.
            let comps: Vec<u8> = xstate::components::bits(report.xcr0 | report.xss | 3).collect();
            let swatches: Vec<&str> = svg
                .lines()
                .filter(|l| l.contains(r#"width="12" height="12""#) && l.contains("fill=\"#"))
                .map(|l| {
                    l.split("fill=\"")
                        .nth(1)
                        .unwrap()
                        .split('"')
                        .next()
                        .unwrap()
                })
                .collect();
            let distinct: std::collections::BTreeSet<&str> =
                swatches[..comps.len()].iter().copied().collect();
            assert_eq!(distinct.len(), comps.len(), "{}", path.display());
            // Each component's name is on the map or in the legend.
            for id in comps {
                let n = Component::name_of(id);
                assert!(
                    boxes.iter().any(|(_, t)| *t == n),
                    "{}: {n}",
                    path.display()
                );
            }
            drawn += 1;
        }
        assert!(drawn >= 40, "{drawn} pictures");
    }

    #[test]
    fn a_form_that_cannot_be_drawn_says_why() {
        // Nehalem: no XSAVE, so no compacted form.
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../xstate/tests/fixtures/cpuid/hwloc/Intel-Nehalem-2xXeon-X5550.txt");
        let dump = CpuidDump::parse(&std::fs::read_to_string(&p).unwrap(), "nehalem").unwrap();
        let report = Report::new(&dump, None, None).unwrap();
        let svg = render(&report, "nehalem");
        let texts: Vec<String> = text_boxes(&svg).into_iter().map(|(_, t)| t).collect();
        assert!(
            texts.iter().any(|t| t == "compacted form: cannot be drawn"),
            "{texts:?}"
        );
        assert!(
            texts.iter().any(|t| t.contains("without XSAVE")),
            "{texts:?}"
        );
    }

    #[test]
    fn a_long_source_name_keeps_the_title_inside() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../xstate/tests/fixtures/cpuid/hwloc/Intel-Skylake-2xXeon6140.txt");
        let dump = CpuidDump::parse(&std::fs::read_to_string(&p).unwrap(), "s").unwrap();
        let report = Report::new(&dump, None, None).unwrap();
        let long = format!("/{}/skylake.txt", "very-long-directory-name".repeat(10));
        let svg = render(&report, &long);
        let w = dimension(&svg, "width");
        let (b, t) = &text_boxes(&svg)[0];
        assert!(
            t.starts_with("XSAVE layout of …") && t.contains("skylake.txt"),
            "{t}"
        );
        assert!(b.2 <= w, "{t}");
    }
}
