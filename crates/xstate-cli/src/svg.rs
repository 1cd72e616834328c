//! SVG byte map of a layout: both forms side by side, one row per 64-byte line, one cell per
//! 8 bytes, so an 8-byte PKRU and 8 KiB of tiles are both visible. Legacy area fields, the
//! header, each component, holes (bytes no component uses) and alignment padding are drawn
//! differently, and a legend lists every component's offsets and size.

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

const PALETTE: [&str; 21] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#8cd17d", "#b6992d", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#e15759", "#79706e", "#76b7b2", "#2f8e87", "#d37295", "#fabfd2", "#bab0ac",
    "#d4a6c8", "#86bcb6", "#499894", "#f1ce63", "#a0cbe8",
];

fn color(id: u8) -> &'static str {
    let i = xstate::components::CATALOG
        .iter()
        .position(|c| c.id == id)
        .unwrap_or(usize::from(id));
    PALETTE[i % PALETTE.len()]
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A span of bytes to paint.
struct Span {
    start: u32,
    end: u32,
    fill: String,
    label: String,
}

/// Paints a byte span as one rectangle per row it touches; returns the SVG.
fn span_rects(out: &mut String, x0: u32, row_h: u32, s: &Span) {
    let mut pos = s.start;
    let mut first = true;
    while pos < s.end {
        let row = pos / ROW_BYTES;
        let row_end = ((row + 1) * ROW_BYTES).min(s.end);
        let cx = (pos % ROW_BYTES) * CELL_W / CELL_BYTES;
        let w = (row_end - pos) * CELL_W / CELL_BYTES;
        let y = TOP + row * row_h;
        let _ = writeln!(
            out,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="{}" stroke="#333" stroke-width="0.4"><title>{}</title></rect>"##,
            x0 + cx,
            y,
            w.max(1),
            row_h,
            s.fill,
            esc(&s.label)
        );
        if first && row_h >= 9 && w >= 36 {
            let _ = writeln!(
                out,
                r##"<text x="{}" y="{}" font-size="{}" fill="#000">{}</text>"##,
                x0 + cx + 3,
                y + row_h - 2,
                (row_h - 2).min(12),
                esc(s.label.split(' ').next().unwrap_or(""))
            );
        }
        first = false;
        pos = row_end;
    }
}

fn legacy_spans() -> Vec<Span> {
    let mk = |a, b, fill: &str, label: &str| Span {
        start: a,
        end: b,
        fill: String::from(fill),
        label: String::from(label),
    };
    vec![
        mk(0, 24, color(0), "x87 FCW FSW FTW FOP FIP FDP (0..24)"),
        mk(24, 32, color(1), "MXCSR MXCSR_MASK (24..32)"),
        mk(32, 160, color(0), "x87 ST0-ST7 (32..160)"),
        mk(160, 416, color(1), "sse XMM0-XMM15 (160..416)"),
        mk(416, 464, "#dddddd", "reserved (416..464)"),
        mk(464, 512, "#eeeeee", "available to software (464..512)"),
        mk(512, 520, "#c9c9c9", "XSTATE_BV (512)"),
        mk(520, 528, "#b9b9b9", "XCOMP_BV (520)"),
        mk(528, 576, "#dddddd", "header reserved (528..576)"),
    ]
}

fn form_spans(fl: &FormLayout) -> Vec<Span> {
    let mut spans = legacy_spans();
    let mut ext: Vec<Placement> = fl
        .placements
        .iter()
        .filter(|p| p.id >= 2)
        .copied()
        .collect();
    ext.sort_by_key(|p| p.offset);
    let mut cursor = EXTENDED_START;
    for p in &ext {
        if p.offset > cursor {
            let padding = fl.form == Form::Compacted;
            spans.push(Span {
                start: cursor,
                end: p.offset,
                fill: String::from(if padding { "url(#pad)" } else { "url(#hole)" }),
                label: format!(
                    "{} {}..{} ({} bytes)",
                    if padding { "alignment padding" } else { "hole" },
                    cursor,
                    p.offset,
                    p.offset - cursor
                ),
            });
        }
        spans.push(Span {
            start: p.offset,
            end: p.end(),
            fill: String::from(color(p.id)),
            label: format!(
                "{} {}..{} ({} bytes)",
                Component::name_of(p.id),
                p.offset,
                p.end(),
                p.size
            ),
        });
        cursor = cursor.max(p.end());
    }
    if fl.size > cursor {
        spans.push(Span {
            start: cursor,
            end: fl.size,
            fill: String::from("url(#hole)"),
            label: format!("hole {}..{}", cursor, fl.size),
        });
    }
    spans
}

/// Renders the report's two forms as an SVG document.
pub fn render(r: &Report, source: &str) -> String {
    let forms: Vec<(&str, Option<&FormLayout>)> = vec![
        ("standard", r.standard.as_ref().ok()),
        ("compacted", r.compacted.as_ref().ok()),
    ];
    let max_size = forms
        .iter()
        .filter_map(|(_, f)| f.map(|f| f.size))
        .max()
        .unwrap_or(512);
    let rows = max_size.div_ceil(ROW_BYTES);
    let row_h = (900 / rows.max(1)).clamp(4, 18);
    let legend_x = MARGIN + 2 * COL_W + COL_GAP + 40;
    let width = legend_x + 420;
    let comps: Vec<u8> = xstate::components::bits(r.xcr0 | r.xss | 3).collect();
    let height = (TOP + rows * row_h + 40).max(TOP + 40 + 18 * (comps.len() as u32 + 6));
    let mut out = String::new();
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
    let _ = writeln!(
        out,
        r#"<text x="{MARGIN}" y="24" font-size="16">XSAVE layout of {}: XCR0 {:#x}, IA32_XSS {:#x}</text>"#,
        esc(source),
        r.xcr0,
        r.xss
    );
    for (i, (name, fl)) in forms.iter().enumerate() {
        let x0 = MARGIN + i as u32 * (COL_W + COL_GAP);
        let title = match fl {
            Some(f) => format!("{name} form: {} bytes", f.size),
            None => format!("{name} form: not available"),
        };
        let _ = writeln!(
            out,
            r#"<text x="{x0}" y="{}" font-size="13">{}</text>"#,
            TOP - 20,
            esc(&title)
        );
        let _ = writeln!(
            out,
            r##"<text x="{x0}" y="{}" font-size="9" fill="#555">one row = 64 bytes, one cell = 8 bytes</text>"##,
            TOP - 6
        );
        let Some(fl) = fl else { continue };
        for s in form_spans(fl) {
            span_rects(&mut out, x0, row_h, &s);
        }
        // Offset marks at every component start and at every 512 bytes.
        let mut marks: Vec<u32> = fl.placements.iter().map(|p| p.offset).collect();
        marks.extend((0..fl.size).step_by(512));
        marks.push(fl.size);
        marks.sort_unstable();
        marks.dedup();
        let mut last_y = 0;
        for m in marks {
            let y = TOP + (m / ROW_BYTES) * row_h + 8;
            if y < last_y + 9 && m != fl.size {
                continue;
            }
            last_y = y;
            let _ = writeln!(
                out,
                r##"<text x="{}" y="{}" font-size="9" text-anchor="end" fill="#333">{}</text>"##,
                x0 - 4,
                y,
                m
            );
        }
    }
    // Legend: one text element per column so the columns line up.
    let cols = [0u32, 110, 160, 240];
    for (text, dx) in ["component", "size", "standard", "compacted"]
        .iter()
        .zip(cols)
    {
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" font-size="12" font-weight="bold">{text}</text>"#,
            legend_x + 18 + dx,
            TOP - 20
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
            y,
            color(id),
        );
        let cells = [
            Component::name_of(id),
            g.size.to_string(),
            fmt(std.and_then(|s| s.offset_of(id))),
            fmt(cmp.and_then(|c| c.offset_of(id))),
        ];
        for (text, dx) in cells.iter().zip(cols) {
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}" font-size="12">{}</text>"#,
                legend_x + 18 + dx,
                y + 10,
                esc(text)
            );
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
            r##"<rect x="{legend_x}" y="{yy}" width="12" height="12" fill="{fill}" stroke="#333"/><text x="{}" y="{}" font-size="12">{}</text>"##,
            legend_x + 18,
            yy + 10,
            esc(text)
        );
    }
    out.push_str("</svg>\n");
    out
}
