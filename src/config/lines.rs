//! Finds the line of a TOML path (`routes[1].plugins[0].status`) in the source text, so every
//! error can say where to look.

use toml_edit::{ImDocument, Item, Value};

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some(end) = rest.find(']') {
            if let Ok(i) = rest[1..end].parse() {
                out.push(Seg::Index(i));
            }
            rest = &rest[end + 1..];
        }
    }
    out
}

/// Index of line starts, built once per file.
pub struct LineIndex {
    doc: Option<ImDocument<String>>,
    starts: Vec<usize>,
}

impl LineIndex {
    /// Index `source` (which has already parsed as TOML).
    pub fn new(source: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex {
            doc: ImDocument::parse(source.to_string()).ok(),
            starts,
        }
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    /// The line of the deepest part of `path` that exists in the file.
    pub fn line_of_path(&self, path: &str) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut best: Option<usize> = None;
        let mut cur = Node::Item(doc.as_item());
        for seg in segments(path) {
            let (span, next) = match (cur, seg) {
                (Node::Item(item), Seg::Key(k)) => match item {
                    Item::Table(t) => match t.get_key_value(k) {
                        Some((key, it)) => (key.span().or(it.span()), Node::Item(it)),
                        None => break,
                    },
                    Item::Value(Value::InlineTable(t)) => match t.get_key_value(k) {
                        Some((key, it)) => (key.span().or(it.span()), Node::Item(it)),
                        None => break,
                    },
                    _ => break,
                },
                (Node::Item(item), Seg::Index(i)) => match item {
                    Item::ArrayOfTables(a) => match a.get(i) {
                        Some(t) => (t.span(), Node::Table(t)),
                        None => break,
                    },
                    Item::Value(Value::Array(a)) => match a.get(i) {
                        Some(v) => (v.span(), Node::Value(v)),
                        None => break,
                    },
                    _ => break,
                },
                (Node::Table(t), Seg::Key(k)) => match t.get_key_value(k) {
                    Some((key, it)) => (key.span().or(it.span()), Node::Item(it)),
                    None => break,
                },
                (Node::Value(Value::InlineTable(t)), Seg::Key(k)) => match t.get_key_value(k) {
                    Some((key, it)) => (key.span().or(it.span()), Node::Item(it)),
                    None => break,
                },
                (Node::Value(Value::Array(a)), Seg::Index(i)) => match a.get(i) {
                    Some(v) => (v.span(), Node::Value(v)),
                    None => break,
                },
                _ => break,
            };
            if let Some(s) = span {
                best = Some(self.line_of(s.start));
            }
            cur = next;
        }
        best
    }
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Table(&'a toml_edit::Table),
    Value(&'a Value),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lines() {
        let src = "[server]\nlisten = [\"a\", \"b\"]\n\n[[routes]]\nname = \"a\"\n\n[[routes]]\nname = \"b\"\nplugins = [{ name = \"mock\", status = 1 }]\n";
        let idx = LineIndex::new(src);
        assert_eq!(idx.line_of_path("server.listen"), Some(2));
        assert_eq!(idx.line_of_path("routes[1].name"), Some(8));
        assert_eq!(idx.line_of_path("routes[1].plugins[0].status"), Some(9));
        assert_eq!(idx.line_of_path("routes[1].missing"), Some(7));
        assert_eq!(idx.line_of_path("nothing"), None);
    }
}
