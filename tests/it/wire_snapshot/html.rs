//! HTML pages as what a person and a browser get from them, not as bytes: the element
//! tree with sorted attributes, decoded entities and visible text, so a page rendered
//! by another template engine compares equal when it shows the same thing.
//!
//! Whitespace: text runs collapse to one space; whitespace-only text between tags is
//! dropped; a text's leading or trailing space is kept only next to an inline element
//! (where a browser shows it), not at a block's edge.

use super::normalise::{Namer, redact_ages};

/// Elements without content or end tag.
const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr",
];

/// Elements at whose edges a browser does not show whitespace.
const BLOCK: &[&str] = &[
    "html",
    "head",
    "body",
    "title",
    "meta",
    "link",
    "header",
    "footer",
    "main",
    "nav",
    "section",
    "article",
    "aside",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "p",
    "div",
    "form",
    "fieldset",
    "legend",
    "dl",
    "dt",
    "dd",
    "ul",
    "ol",
    "li",
    "details",
    "summary",
    "table",
    "thead",
    "tbody",
    "tr",
    "td",
    "th",
    "pre",
    "blockquote",
    "hr",
    "br",
];

/// Inline elements whose content is laid out on lines of its own (inline blocks), so a
/// browser does not show whitespace at the edges of their content either.
const INLINE_BLOCK: &[&str] = &["button", "select", "option"];

/// Attributes whose presence is their meaning (`required`, `required=""` and
/// `required="required"` are the same).
const BOOLEAN: &[&str] = &[
    "required",
    "autofocus",
    "disabled",
    "checked",
    "selected",
    "hidden",
    "readonly",
    "multiple",
    "open",
];

/// A parsed node.
#[derive(Debug, Clone)]
pub enum Node {
    /// `<!doctype ...>`, lowercased.
    Doctype(String),
    /// An element.
    Element(Element),
    /// Text, entities decoded.
    Text(String),
}

/// An element with its attributes (entities decoded) and children.
#[derive(Debug, Clone, Default)]
pub struct Element {
    /// Lowercase tag name.
    pub name: String,
    /// Attributes as written, names lowercased.
    pub attrs: Vec<(String, String)>,
    /// Children.
    pub children: Vec<Node>,
}

impl Element {
    /// An attribute's value.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every text inside, concatenated.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.children {
            match c {
                Node::Text(t) => out.push_str(t),
                Node::Element(e) => out.push_str(&e.text()),
                Node::Doctype(_) => {}
            }
        }
        out
    }
}

/// Every element of `nodes` (depth first) for which `pred` holds.
pub fn find_all<'a>(nodes: &'a [Node], pred: &dyn Fn(&Element) -> bool) -> Vec<&'a Element> {
    let mut out = Vec::new();
    for n in nodes {
        if let Node::Element(e) = n {
            if pred(e) {
                out.push(e);
            }
            out.extend(find_all(&e.children, pred));
        }
    }
    out
}

enum Tok {
    Doctype(String),
    Start(String, Vec<(String, String)>),
    End(String),
    Text(String),
}

/// Parse a page into its top-level nodes. Tolerant: an unmatched end tag is ignored,
/// unclosed elements close at the end.
pub fn parse(src: &str) -> Vec<Node> {
    let mut stack: Vec<Element> = vec![Element::default()];
    for tok in tokens(src) {
        match tok {
            Tok::Doctype(d) => stack.last_mut().expect("root").children.push(Node::Doctype(d)),
            Tok::Text(t) => {
                let top = stack.last_mut().expect("root");
                match top.children.last_mut() {
                    Some(Node::Text(prev)) => prev.push_str(&t),
                    _ => top.children.push(Node::Text(t)),
                }
            }
            Tok::Start(name, attrs) => {
                let e = Element {
                    name,
                    attrs,
                    children: Vec::new(),
                };
                if VOID.contains(&e.name.as_str()) {
                    stack.last_mut().expect("root").children.push(Node::Element(e));
                } else {
                    stack.push(e);
                }
            }
            Tok::End(name) => {
                if let Some(at) = stack.iter().rposition(|e| e.name == name)
                    && at > 0
                {
                    while stack.len() > at {
                        let done = stack.pop().expect("open element");
                        stack
                            .last_mut()
                            .expect("parent")
                            .children
                            .push(Node::Element(done));
                    }
                }
            }
        }
    }
    while stack.len() > 1 {
        let done = stack.pop().expect("open element");
        stack
            .last_mut()
            .expect("parent")
            .children
            .push(Node::Element(done));
    }
    stack.pop().expect("root").children
}

fn tokens(src: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let b = src.as_bytes();
    let mut i = 0;
    let mut text = String::new();
    let flush = |text: &mut String, out: &mut Vec<Tok>| {
        if !text.is_empty() {
            out.push(Tok::Text(decode(text)));
            text.clear();
        }
    };
    while i < src.len() {
        let rest = &src[i..];
        if rest.starts_with("<!--") {
            flush(&mut text, &mut out);
            i += rest.find("-->").map_or(rest.len(), |e| e + 3);
        } else if rest.starts_with("<!") {
            flush(&mut text, &mut out);
            let end = rest.find('>').unwrap_or(rest.len());
            let inner = rest[2..end].split_whitespace().collect::<Vec<_>>().join(" ");
            out.push(Tok::Doctype(inner.to_ascii_lowercase()));
            i += (end + 1).min(rest.len());
        } else if rest.starts_with("</") && b.get(i + 2).is_some_and(u8::is_ascii_alphabetic) {
            flush(&mut text, &mut out);
            let end = rest.find('>').unwrap_or(rest.len());
            out.push(Tok::End(rest[2..end].trim().to_ascii_lowercase()));
            i += (end + 1).min(rest.len());
        } else if rest.starts_with('<') && b.get(i + 1).is_some_and(u8::is_ascii_alphabetic) {
            flush(&mut text, &mut out);
            let (tok, n) = start_tag(rest);
            out.push(tok);
            i += n;
        } else {
            let ch = rest.chars().next().expect("not at the end");
            text.push(ch);
            i += ch.len_utf8();
        }
    }
    flush(&mut text, &mut out);
    out
}

/// A start tag at the beginning of `s`, and its length.
fn start_tag(s: &str) -> (Tok, usize) {
    let b = s.as_bytes();
    let mut i = 1;
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'-') {
        i += 1;
    }
    let name = s[1..i].to_ascii_lowercase();
    let mut attrs = Vec::new();
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        if b[i] == b'>' {
            i += 1;
            break;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && !matches!(b[i], b'=' | b'>' | b'/') {
            i += 1;
        }
        let key = s[start..i].to_ascii_lowercase();
        let mut j = i;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        let mut value = String::new();
        if b.get(j) == Some(&b'=') {
            j += 1;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            match b.get(j) {
                Some(q @ (b'"' | b'\'')) => {
                    let end = s[j + 1..].find(*q as char).map_or(s.len(), |e| j + 1 + e);
                    value = decode(&s[j + 1..end]);
                    j = (end + 1).min(s.len());
                }
                _ => {
                    let start = j;
                    while j < b.len() && !b[j].is_ascii_whitespace() && b[j] != b'>' {
                        j += 1;
                    }
                    value = decode(&s[start..j]);
                }
            }
            i = j;
        }
        if !key.is_empty() {
            attrs.push((key, value));
        } else {
            i += 1;
        }
    }
    (Tok::Start(name, attrs), i)
}

/// Decode character references.
fn decode(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let end = rest[1..].find(';').map(|e| e + 1).filter(|e| *e <= 10);
        let decoded = end.and_then(|e| {
            let name = &rest[1..e];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ => match name.strip_prefix('#') {
                    Some(hex) if hex.starts_with(['x', 'X']) => {
                        u32::from_str_radix(&hex[1..], 16).ok().and_then(char::from_u32)
                    }
                    Some(dec) => dec.parse().ok().and_then(char::from_u32),
                    None => None,
                },
            };
            c.map(|c| (c, e + 1))
        });
        match decoded {
            Some((c, n)) => {
                out.push(c);
                rest = &rest[n..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The page as indented lines: one element per line with its sorted attributes, and
/// its visible text as quoted strings.
pub fn render(src: &str, namer: &mut Namer) -> Vec<String> {
    let nodes = parse(src);
    let mut out = Vec::new();
    render_children(&nodes, true, 0, namer, &mut out);
    out
}

fn is_block(name: &str) -> bool {
    BLOCK.contains(&name)
}

/// What a browser shows of `children`: elements, and texts with their whitespace
/// normalised (`None` for a text that shows nothing).
fn visible<'a>(children: &'a [Node], parent_block: bool) -> Vec<Visible<'a>> {
    let edge_is_block = |n: Option<&Node>| match n {
        None => parent_block,
        Some(Node::Element(e)) => is_block(&e.name),
        Some(_) => true,
    };
    let mut out = Vec::new();
    for (i, c) in children.iter().enumerate() {
        match c {
            Node::Text(t) => {
                let collapsed = t
                    .split(|c: char| c.is_ascii_whitespace())
                    .filter(|w| !w.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                if collapsed.is_empty() {
                    continue;
                }
                let lead = t.starts_with(|c: char| c.is_ascii_whitespace())
                    && !edge_is_block(i.checked_sub(1).map(|p| &children[p]));
                let trail =
                    t.ends_with(|c: char| c.is_ascii_whitespace()) && !edge_is_block(children.get(i + 1));
                let text = format!(
                    "{}{collapsed}{}",
                    if lead { " " } else { "" },
                    if trail { " " } else { "" }
                );
                out.push(Visible::Text(text));
            }
            Node::Element(e) => out.push(Visible::Element(e)),
            Node::Doctype(d) => out.push(Visible::Doctype(d)),
        }
    }
    out
}

enum Visible<'a> {
    Doctype(&'a str),
    Element(&'a Element),
    Text(String),
}

fn render_children(
    children: &[Node],
    parent_block: bool,
    depth: usize,
    namer: &mut Namer,
    out: &mut Vec<String>,
) {
    for v in visible(children, parent_block) {
        match v {
            Visible::Doctype(d) => out.push(format!("{}<!{d}>", "  ".repeat(depth))),
            Visible::Text(t) => out.push(format!("{}{}", "  ".repeat(depth), text(&t, namer))),
            Visible::Element(e) => render_element(e, depth, namer, out),
        }
    }
}

fn text(t: &str, namer: &mut Namer) -> String {
    format!("{:?}", redact_ages(&namer.text(t)))
}

fn render_element(e: &Element, depth: usize, namer: &mut Namer, out: &mut Vec<String>) {
    let mut attrs: Vec<&(String, String)> = e.attrs.iter().collect();
    attrs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut line = format!("{}<{}", "  ".repeat(depth), e.name);
    for (k, v) in attrs {
        line.push(' ');
        line.push_str(k);
        if BOOLEAN.contains(&k.as_str()) {
            continue;
        }
        let v = if let Some(data) = v.strip_prefix("data:") {
            // The media type stays; the data (a QR code of a secret) does not.
            let media = data.split(',').next().unwrap_or_default();
            format!("data:{media},<data>")
        } else {
            namer.text(v)
        };
        line.push_str(&format!("={v:?}"));
    }
    line.push('>');
    // Whitespace at the edges of the content shows nowhere a line starts or ends.
    let block = is_block(&e.name) || INLINE_BLOCK.contains(&e.name.as_str());
    let shown = visible(&e.children, block);
    if let [Visible::Text(t)] = shown.as_slice() {
        line.push(' ');
        line.push_str(&text(t, namer));
        out.push(line);
        return;
    }
    out.push(line);
    if e.name == "section" {
        // Requests listed in a section come newest first; requests made within the same
        // second have no guaranteed order, so they are compared sorted.
        let mut children = e.children.clone();
        let slots: Vec<usize> = (0..children.len())
            .filter(|i| matches!(&children[*i], Node::Element(c) if c.name == "article"))
            .collect();
        let mut keyed: Vec<(String, Node)> = slots
            .iter()
            .map(|i| {
                let node = children[*i].clone();
                let key = namer.sorting(|n| {
                    let mut lines = Vec::new();
                    render_children(std::slice::from_ref(&node), true, 0, n, &mut lines);
                    lines.join("\n")
                });
                (key, node)
            })
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        for (slot, (_, node)) in slots.into_iter().zip(keyed) {
            children[slot] = node;
        }
        render_children(&children, block, depth + 1, namer, out);
    } else {
        render_children(&e.children, block, depth + 1, namer, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equivalent_markup_renders_alike() {
        let hand = "<!doctype html>\n<p class=\"a\" id='x'>Code: <span>AB&amp;C</span>\n</p>\n<input required name=\"n\">";
        let engine = "<!DOCTYPE html><p id=\"x\" class=\"a\">Code:\n  <span>AB&#38;C</span></p><input name=\"n\" required=\"\">";
        let mut n = Namer::new("http://127.0.0.1:1");
        assert_eq!(render(hand, &mut n), render(engine, &mut n));
        assert_eq!(
            render(hand, &mut n),
            vec![
                "<!doctype html>",
                "<p class=\"a\" id=\"x\">",
                "  \"Code: \"",
                "  <span> \"AB&C\"",
                "<input name=\"n\" required>",
            ]
        );
    }

    #[test]
    fn whitespace_at_a_line_edge_does_not_show() {
        let mut n = Namer::new("http://127.0.0.1:1");
        assert_eq!(
            render("<p>\n  <button>\n Sign in \n</button>\n</p>", &mut n),
            render("<p><button>Sign in</button></p>", &mut n)
        );
    }

    #[test]
    fn a_missing_space_next_to_an_inline_element_shows() {
        let mut n = Namer::new("http://127.0.0.1:1");
        assert_ne!(
            render("<p>Code: <b>X</b></p>", &mut n),
            render("<p>Code:<b>X</b></p>", &mut n)
        );
    }
}
