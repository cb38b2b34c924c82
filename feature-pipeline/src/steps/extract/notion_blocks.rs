//! Notion API blocks and properties to markdown and JSON: the same form the export gives.
//!
//! Input: block objects as Notion's API returns them (version 2022-06-28), with their children
//! already fetched, and a page's `properties`. Output: markdown close to what Notion's own
//! "Markdown & CSV" export writes for the same page, and properties as plain strings, so a page
//! read through the API and the same page read from an export make the same document.

use serde_json::{Map, Value};

use super::notion_export::page_url;

/// A block and its fetched children.
#[derive(Debug, Clone)]
pub struct BlockNode {
    /// The block object as the API returned it.
    pub block: Value,
    /// Its children (empty unless `has_children`).
    pub children: Vec<BlockNode>,
}

/// Renders rich text (an array of rich text objects) as markdown.
pub fn rich_text(items: &Value) -> String {
    let Some(items) = items.as_array() else {
        return String::new();
    };
    let mut out = String::new();
    for item in items {
        let text = item["plain_text"].as_str().unwrap_or_default();
        if text.is_empty() {
            continue;
        }
        let annotations = &item["annotations"];
        let mut piece = text.to_string();
        // Markdown emphasis must hug the text: move surrounding spaces outside the markers.
        let wrap = |piece: String, marker: &str| {
            let trimmed = piece.trim();
            if trimmed.is_empty() {
                return piece;
            }
            let lead = &piece[..piece.len() - piece.trim_start().len()];
            let trail = &piece[piece.trim_end().len()..];
            format!("{lead}{marker}{trimmed}{marker}{trail}")
        };
        if annotations["code"].as_bool() == Some(true) {
            piece = wrap(piece, "`");
        }
        if annotations["bold"].as_bool() == Some(true) {
            piece = wrap(piece, "**");
        }
        if annotations["italic"].as_bool() == Some(true) {
            piece = wrap(piece, "*");
        }
        if annotations["strikethrough"].as_bool() == Some(true) {
            piece = wrap(piece, "~~");
        }
        if let Some(href) = item["href"].as_str() {
            piece = format!("[{piece}]({href})");
        }
        out.push_str(&piece);
    }
    out
}

/// Renders blocks as markdown, nested blocks indented under list items.
pub fn render(blocks: &[BlockNode]) -> String {
    let mut out = String::new();
    render_into(blocks, 0, &mut out);
    out
}

fn render_into(blocks: &[BlockNode], depth: usize, out: &mut String) {
    let indent = "    ".repeat(depth);
    let mut number = 0;
    for node in blocks {
        let block = &node.block;
        let kind = block["type"].as_str().unwrap_or_default();
        let body = &block[kind];
        let text = rich_text(&body["rich_text"]);
        number = if kind == "numbered_list_item" { number + 1 } else { 0 };
        let list_like = matches!(kind, "bulleted_list_item" | "numbered_list_item" | "to_do" | "toggle");
        let line = match kind {
            "paragraph" => text,
            "heading_1" => format!("# {text}"),
            "heading_2" => format!("## {text}"),
            "heading_3" => format!("### {text}"),
            "bulleted_list_item" => format!("- {text}"),
            "numbered_list_item" => format!("{number}. {text}"),
            "to_do" => {
                let mark = if body["checked"].as_bool() == Some(true) {
                    "x"
                } else {
                    " "
                };
                format!("- [{mark}] {text}")
            }
            "toggle" => format!("- {text}"),
            "quote" => prefix_lines(&text, "> "),
            "callout" => {
                let icon = body["icon"]["emoji"]
                    .as_str()
                    .map(|e| format!("{e} "))
                    .unwrap_or_default();
                prefix_lines(&format!("{icon}{text}"), "> ")
            }
            "code" => {
                let language = body["language"].as_str().unwrap_or_default();
                let language = if language == "plain text" { "" } else { language };
                let code: String = body["rich_text"]
                    .as_array()
                    .map(|items| items.iter().filter_map(|i| i["plain_text"].as_str()).collect())
                    .unwrap_or_default();
                format!("```{language}\n{code}\n```")
            }
            "divider" => "---".to_string(),
            "bookmark" | "link_preview" | "embed" => {
                let url = body["url"].as_str().unwrap_or_default();
                let caption = rich_text(&body["caption"]);
                let label = if caption.is_empty() { url.to_string() } else { caption };
                format!("[{label}]({url})")
            }
            "child_page" => {
                let title = body["title"].as_str().unwrap_or("Untitled");
                let id = block["id"].as_str().unwrap_or_default();
                format!("[{title}]({})", page_url(id))
            }
            "child_database" => format!("*Database: {}*", body["title"].as_str().unwrap_or_default()),
            "image" | "file" | "pdf" | "video" => {
                let caption = rich_text(&body["caption"]);
                if caption.is_empty() {
                    format!("[{kind}]")
                } else {
                    format!("[{kind}: {caption}]")
                }
            }
            "equation" => format!("$${}$$", body["expression"].as_str().unwrap_or_default()),
            // Layout and navigation blocks carry no text of their own.
            "table_of_contents" | "breadcrumb" | "column_list" | "column" | "synced_block" | "template" => {
                String::new()
            }
            "table_row" => {
                let cells: Vec<String> = body["cells"]
                    .as_array()
                    .map(|cells| cells.iter().map(rich_text).collect())
                    .unwrap_or_default();
                format!("| {} |", cells.join(" | "))
            }
            _ => text,
        };
        if !line.is_empty() {
            out.push_str(&prefix_lines(&line, &indent));
            out.push_str(if list_like { "\n" } else { "\n\n" });
        }
        if kind == "table" {
            render_table(&node.children, &indent, out);
        } else if !node.children.is_empty() {
            let child_depth = if list_like || kind == "quote" || kind == "callout" {
                depth + 1
            } else {
                depth
            };
            render_into(&node.children, child_depth, out);
        }
        if list_like && node.children.is_empty() && !next_is_list(blocks, node) {
            out.push('\n');
        }
    }
}

fn next_is_list(blocks: &[BlockNode], node: &BlockNode) -> bool {
    let position = blocks.iter().position(|b| std::ptr::eq(b, node));
    position
        .and_then(|i| blocks.get(i + 1))
        .and_then(|next| next.block["type"].as_str())
        .is_some_and(|kind| matches!(kind, "bulleted_list_item" | "numbered_list_item" | "to_do" | "toggle"))
}

fn render_table(rows: &[BlockNode], indent: &str, out: &mut String) {
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row.block["table_row"]["cells"]
            .as_array()
            .map(|cells| cells.iter().map(rich_text).collect())
            .unwrap_or_default();
        out.push_str(&format!("{indent}| {} |\n", cells.join(" | ")));
        if i == 0 {
            out.push_str(&format!("{indent}|{}\n", " --- |".repeat(cells.len())));
        }
    }
    out.push('\n');
}

fn prefix_lines(text: &str, prefix: &str) -> String {
    text.lines()
        .map(|line| format!("{prefix}{line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A page's title: the text of its `title` property.
pub fn page_title(page: &Value) -> String {
    page["properties"]
        .as_object()
        .and_then(|props| props.values().find(|p| p["type"] == "title"))
        .map(|p| rich_text(&p["title"]))
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "Untitled".to_string())
}

/// A page's properties other than the title, as plain strings (as the export's CSV has them).
pub fn page_properties(page: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(props) = page["properties"].as_object() else {
        return out;
    };
    for (name, prop) in props {
        let kind = prop["type"].as_str().unwrap_or_default();
        let value = &prop[kind];
        let text = match kind {
            "title" => continue,
            "rich_text" => rich_text(value),
            "select" | "status" => value["name"].as_str().unwrap_or_default().to_string(),
            "multi_select" => value
                .as_array()
                .map(|v| {
                    v.iter()
                        .filter_map(|o| o["name"].as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default(),
            "date" => value["start"].as_str().unwrap_or_default().to_string(),
            "number" => value.as_f64().map(|n| n.to_string()).unwrap_or_default(),
            "checkbox" => if value.as_bool() == Some(true) { "Yes" } else { "No" }.to_string(),
            "url" | "email" | "phone_number" => value.as_str().unwrap_or_default().to_string(),
            _ => continue,
        };
        if !text.is_empty() {
            out.insert(name.clone(), Value::String(text));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(content: &str) -> Value {
        json!([{ "plain_text": content, "href": null, "annotations": {} }])
    }

    fn node(kind: &str, body: Value) -> BlockNode {
        BlockNode {
            block: json!({ "id": "3b1c9d6e-2f4a-4e8b-9c1d-7a5e6f8b2c10", "type": kind, kind: body }),
            children: vec![],
        }
    }

    #[test]
    fn annotations_and_links_become_markdown() {
        let items = json!([
            { "plain_text": "Run ", "href": null, "annotations": {} },
            { "plain_text": "cargo test ", "href": null, "annotations": { "code": true } },
            { "plain_text": "now", "href": "http://docs.test/x", "annotations": { "bold": true } }
        ]);
        assert_eq!(rich_text(&items), "Run `cargo test` [**now**](http://docs.test/x)");
    }

    #[test]
    fn blocks_render_like_the_export() {
        let mut toggle = node("toggle", json!({ "rich_text": text("Details") }));
        toggle.children = vec![node("paragraph", json!({ "rich_text": text("Hidden") }))];
        let blocks = vec![
            node("heading_2", json!({ "rich_text": text("Steps") })),
            node("numbered_list_item", json!({ "rich_text": text("one") })),
            node("numbered_list_item", json!({ "rich_text": text("two") })),
            node("to_do", json!({ "rich_text": text("ship"), "checked": true })),
            toggle,
            node("code", json!({ "rich_text": text("ls -l"), "language": "bash" })),
            node("child_page", json!({ "title": "Rollback" })),
        ];
        let md = render(&blocks);
        assert!(
            md.starts_with("## Steps\n\n1. one\n2. two\n- [x] ship\n- Details\n    Hidden"),
            "{md}"
        );
        assert!(md.contains("```bash\nls -l\n```"), "{md}");
        assert!(
            md.contains("[Rollback](https://www.notion.so/3b1c9d6e2f4a4e8b9c1d7a5e6f8b2c10)"),
            "{md}"
        );
    }
}
