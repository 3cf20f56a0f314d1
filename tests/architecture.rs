//! The layout rules of docs/architecture.md, checked on the source itself:
//! - no module of `src/` or `plugins/src/` imports a module that imports it back (directly or
//!   through others): the dependency graph between source files has no cycle;
//! - no process-global mutable state except metrics: no `static` holding a lock, a lazy or
//!   once cell, an atomic or a thread-local outside the `metrics.rs` files.
//!
//! A file depends on another when it names an item of it: in a `use` (including brace
//! groups), or inline as `crate::a::b`, `super::x`, `self::x` or `child::x`. Items
//! re-exported by a module (`pub use x::Y`) count as the defining module's.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// One crate's source tree.
struct Crate {
    src: PathBuf,
    /// Module path (`["proxy", "error"]`) → file.
    files: BTreeMap<Vec<String>, PathBuf>,
}

impl Crate {
    fn load(src: &Path) -> Crate {
        let mut files = BTreeMap::new();
        walk(src, src, &mut files);
        Crate {
            src: src.to_path_buf(),
            files,
        }
    }

    fn is_module(&self, path: &[String]) -> bool {
        self.files.contains_key(path)
    }

    /// The module an absolute path (from the crate root) names an item of: the longest
    /// prefix that is a module file, following `pub use` re-exports for the next segment.
    fn resolve(&self, path: &[String], depth: usize) -> Option<Vec<String>> {
        if depth > 8 {
            return None;
        }
        let mut module: Vec<String> = Vec::new();
        for (i, seg) in path.iter().enumerate() {
            let mut next = module.clone();
            next.push(seg.clone());
            if self.is_module(&next) {
                module = next;
                continue;
            }
            // `seg` is an item of `module`: defined there, or re-exported from elsewhere.
            if let Some(target) = self.reexport(&module, seg) {
                let mut full = target;
                full.extend(path[i + 1..].iter().cloned());
                return self.resolve(&full, depth + 1).or(Some(module));
            }
            return Some(module);
        }
        Some(module)
    }

    /// Where `module` re-exports `item` from (`pub use a::b::Item;` → `a::b::Item`, made
    /// absolute).
    fn reexport(&self, module: &[String], item: &str) -> Option<Vec<String>> {
        let file = self.files.get(module)?;
        let text = strip_comments(&fs::read_to_string(file).ok()?);
        for stmt in text.split(';') {
            let stmt = stmt.trim();
            let Some(rest) = stmt
                .strip_prefix("pub use ")
                .or_else(|| stmt.strip_prefix("pub(crate) use "))
            else {
                continue;
            };
            for p in expand_use_tree(rest) {
                let last = p.last().map(String::as_str);
                let renamed = p.iter().position(|s| s == "as");
                let name = match renamed {
                    Some(i) => p.get(i + 1).map(String::as_str),
                    None => last,
                };
                if name == Some(item) {
                    let p: Vec<String> = match renamed {
                        Some(i) => p[..i].to_vec(),
                        None => p,
                    };
                    return Some(self.absolute(module, &p, &child_modules(&text)));
                }
            }
        }
        None
    }

    /// An absolute module path for `p` as written in `module` (handles `crate`, `super`,
    /// `self` and child modules).
    fn absolute(&self, module: &[String], p: &[String], children: &[String]) -> Vec<String> {
        let mut base: Vec<String>;
        let mut rest = p;
        match p.first().map(String::as_str) {
            Some("crate") => {
                base = Vec::new();
                rest = &p[1..];
            }
            Some("self") => {
                base = module.to_vec();
                rest = &p[1..];
            }
            Some("super") => {
                base = module.to_vec();
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop();
                    rest = &rest[1..];
                }
            }
            Some(first) if children.iter().any(|c| c == first) => {
                base = module.to_vec();
            }
            _ => return Vec::new(),
        }
        base.extend(rest.iter().cloned());
        base
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<Vec<String>, PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(root).unwrap();
            let mut parts: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            let file = parts.pop().unwrap();
            let stem = file.trim_end_matches(".rs").to_string();
            match stem.as_str() {
                "mod" => {}
                "lib" if parts.is_empty() => {}
                // The binary is not a module of the library.
                "main" if parts.is_empty() => continue,
                _ => parts.push(stem),
            }
            out.insert(parts, p);
        }
    }
}

/// The source without comments (doc links name paths without importing them).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_block = false;
    for line in text.lines() {
        let mut l = line;
        if in_block {
            match l.find("*/") {
                Some(i) => {
                    l = &l[i + 2..];
                    in_block = false;
                }
                None => continue,
            }
        }
        if let Some(i) = l.find("/*") {
            in_block = !l[i..].contains("*/");
            l = &l[..i];
        }
        let code = match find_line_comment(l) {
            Some(i) => &l[..i],
            None => l,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Position of a `//` that is not inside a string literal.
fn find_line_comment(line: &str) -> Option<usize> {
    let b = line.as_bytes();
    let mut in_str = false;
    let mut i = 0;
    while i + 1 < b.len() {
        match b[i] {
            b'\\' if in_str => i += 1,
            b'"' => in_str = !in_str,
            b'/' if !in_str && b[i + 1] == b'/' => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// String literals blanked out, so paths inside them are not read as code.
fn strip_strings(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_str = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_str => {
                chars.next();
            }
            '"' => {
                in_str = !in_str;
                out.push('"');
            }
            _ if in_str => out.push(' '),
            _ => out.push(c),
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Path,
    Open,
    Close,
    Comma,
    Star,
    Other(char),
}

fn tokenize(text: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
            continue;
        }
        if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push(Tok::Path);
            i += 2;
            continue;
        }
        match c {
            '{' => out.push(Tok::Open),
            '}' => out.push(Tok::Close),
            ',' => out.push(Tok::Comma),
            '*' => out.push(Tok::Star),
            c if c.is_whitespace() => {}
            c => out.push(Tok::Other(c)),
        }
        i += 1;
    }
    out
}

/// Expand a use tree (`a::{b, c::{d, e}}`) into its paths.
fn expand_use_tree(tree: &str) -> Vec<Vec<String>> {
    let toks = tokenize(tree);
    let mut pos = 0;
    let mut out = Vec::new();
    parse_tree(&toks, &mut pos, Vec::new(), &mut out);
    out
}

fn parse_tree(toks: &[Tok], pos: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    loop {
        match toks.get(*pos) {
            Some(Tok::Ident(s)) => {
                path.push(s.clone());
                *pos += 1;
                if let Some(Tok::Ident(a)) = toks.get(*pos) {
                    if a == "as" {
                        path.push("as".into());
                        *pos += 1;
                        if let Some(Tok::Ident(n)) = toks.get(*pos) {
                            path.push(n.clone());
                            *pos += 1;
                        }
                    }
                }
                if toks.get(*pos) == Some(&Tok::Path) {
                    *pos += 1;
                    continue;
                }
                out.push(path);
                return;
            }
            Some(Tok::Open) => {
                *pos += 1;
                loop {
                    parse_tree(toks, pos, path.clone(), out);
                    match toks.get(*pos) {
                        Some(Tok::Comma) => {
                            *pos += 1;
                            if toks.get(*pos) == Some(&Tok::Close) {
                                *pos += 1;
                                return;
                            }
                        }
                        Some(Tok::Close) => {
                            *pos += 1;
                            return;
                        }
                        _ => return,
                    }
                }
            }
            Some(Tok::Star) => {
                *pos += 1;
                out.push(path);
                return;
            }
            _ => {
                if !path.is_empty() {
                    out.push(path);
                }
                return;
            }
        }
    }
}

/// `mod x;` declarations of a file (its child modules).
fn child_modules(text: &str) -> Vec<String> {
    let toks = tokenize(text);
    toks.windows(3)
        .filter_map(|w| match w {
            [Tok::Ident(m), Tok::Ident(name), Tok::Other(';')] if m == "mod" => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// The modules `module`'s file depends on.
fn dependencies(krate: &Crate, module: &[String]) -> BTreeSet<Vec<String>> {
    let file = &krate.files[module];
    let text = strip_strings(&strip_comments(&fs::read_to_string(file).unwrap()));
    let children = child_modules(&text);
    let toks = tokenize(&text);
    let mut deps = BTreeSet::new();
    // Inline `mod name { ... }` blocks: `super` inside one stays in this file.
    let mut depth = 0usize;
    let mut inline_mods: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth = depth.saturating_sub(1);
                if inline_mods.last() == Some(&depth) {
                    inline_mods.pop();
                }
            }
            Tok::Ident(m)
                if m == "mod"
                    && matches!(toks.get(i + 1), Some(Tok::Ident(_)))
                    && toks.get(i + 2) == Some(&Tok::Open) =>
            {
                inline_mods.push(depth);
            }
            Tok::Ident(first) if toks.get(i + 1) == Some(&Tok::Path) => {
                let starts = matches!(first.as_str(), "crate" | "super" | "self")
                    || children.contains(first);
                let preceded_by_path = i > 0 && toks[i - 1] == Tok::Path;
                if starts && !preceded_by_path {
                    let mut pos = i;
                    let mut paths = Vec::new();
                    parse_tree(&toks, &mut pos, Vec::new(), &mut paths);
                    for mut p in paths {
                        if let Some(a) = p.iter().position(|s| s == "as") {
                            p.truncate(a);
                        }
                        // `super` inside an inline module first leaves that module.
                        let mut inline = inline_mods.len();
                        while inline > 0 && p.first().map(String::as_str) == Some("super") {
                            p[0] = "self".into();
                            if p.get(1).map(String::as_str) == Some("super") {
                                p.remove(0);
                            }
                            inline -= 1;
                        }
                        let abs = krate.absolute(module, &p, &children);
                        if let Some(target) = krate.resolve(&abs, 0) {
                            if target != module && !target.is_empty() {
                                deps.insert(target);
                            }
                        }
                    }
                    i = pos.max(i + 1);
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    deps
}

/// Every cycle's modules (strongly connected components of more than one module).
fn cycles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    // Kosaraju: order by finish time, then collect components on the reversed graph.
    fn visit<'a>(
        n: &'a Vec<String>,
        g: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        seen: &mut BTreeSet<&'a Vec<String>>,
        order: &mut Vec<&'a Vec<String>>,
    ) {
        if !seen.insert(n) {
            return;
        }
        if let Some(next) = g.get(n) {
            for m in next {
                visit(m, g, seen, order);
            }
        }
        order.push(n);
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for n in graph.keys() {
        visit(n, graph, &mut seen, &mut order);
    }
    let mut reversed: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (a, bs) in graph {
        for b in bs {
            reversed.entry(b.clone()).or_default().insert(a.clone());
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for n in order.into_iter().rev() {
        if assigned.contains(n) {
            continue;
        }
        let mut comp = Vec::new();
        let mut stack = vec![n.clone()];
        while let Some(x) = stack.pop() {
            if !assigned.insert(x.clone()) {
                continue;
            }
            if let Some(prev) = reversed.get(&x) {
                stack.extend(prev.iter().filter(|p| !assigned.contains(*p)).cloned());
            }
            comp.push(x);
        }
        if comp.len() > 1 {
            comp.sort();
            out.push(comp);
        }
    }
    out
}

fn crates() -> Vec<Crate> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    vec![
        Crate::load(&root.join("src")),
        Crate::load(&root.join("plugins/src")),
    ]
}

fn graph_of(krate: &Crate) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    krate
        .files
        .keys()
        .filter(|m| !m.is_empty())
        .map(|m| (m.clone(), dependencies(krate, m)))
        .collect()
}

fn show(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    for krate in crates() {
        let graph = graph_of(&krate);
        let found = cycles(&graph);
        let described: Vec<String> = found
            .iter()
            .map(|c| c.iter().map(|m| show(m)).collect::<Vec<_>>().join(" <-> "))
            .collect();
        assert!(
            found.is_empty(),
            "{}: import cycles:\n  {}",
            krate.src.display(),
            described.join("\n  ")
        );
    }
}

#[test]
fn the_cycle_check_sees_real_imports() {
    // The checker must find what the code plainly imports, or the test above proves nothing.
    let krates = crates();
    let gw = &krates[0];
    let deps = dependencies(gw, &["proxy".to_string()]);
    for expected in [
        vec!["proxy".to_string(), "attempt".to_string()],
        vec!["proxy".to_string(), "error".to_string()],
        vec!["snapshot".to_string()],
        vec!["router".to_string()],
    ] {
        assert!(
            deps.contains(&expected),
            "proxy should use {expected:?}: {deps:?}"
        );
    }
    let plugins = &krates[1];
    let deps = dependencies(plugins, &["jwt".to_string()]);
    assert!(
        deps.contains(&vec!["consumer".to_string(), "jwt_key".to_string()]),
        "{deps:?}"
    );
    assert!(deps.contains(&vec!["plugin".to_string()]), "{deps:?}");
    // And a cycle is found when there is one.
    let mut g = BTreeMap::new();
    let a = vec!["a".to_string()];
    let b = vec!["b".to_string()];
    let c = vec!["c".to_string()];
    g.insert(a.clone(), BTreeSet::from([b.clone()]));
    g.insert(b.clone(), BTreeSet::from([c.clone()]));
    g.insert(c.clone(), BTreeSet::from([a.clone()]));
    assert_eq!(cycles(&g), vec![vec![a, b, c]]);
}

#[test]
fn no_process_global_state_except_metrics() {
    const STATEFUL: [&str; 10] = [
        "LazyLock",
        "OnceLock",
        "OnceCell",
        "Mutex",
        "RwLock",
        "Atomic",
        "RefCell",
        "Cell<",
        "lazy_static",
        "thread_local",
    ];
    let mut found = Vec::new();
    for krate in crates() {
        for file in krate.files.values() {
            if file.file_name().is_some_and(|n| n == "metrics.rs") {
                continue;
            }
            let text = strip_comments(&fs::read_to_string(file).unwrap());
            for (n, line) in text.lines().enumerate() {
                let t = line.trim_start();
                let is_static = t.starts_with("static ")
                    || t.starts_with("pub static ")
                    || t.starts_with("pub(crate) static ")
                    || t.starts_with("pub(super) static ")
                    || t.contains("thread_local!")
                    || t.contains("lazy_static!");
                if is_static && (t.contains("static mut") || STATEFUL.iter().any(|s| t.contains(s)))
                {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, t));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "process-global state:\n{}",
        found.join("\n")
    );
}
