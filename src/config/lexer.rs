//! Tokens of vit.conf: words, quoted strings, braces and `;`, with 1-based line and column.
//!
//! Columns count characters (not bytes). Whitespace is anything Unicode calls whitespace (so a
//! trailing U+00A0 pasted from a web page is harmless); `#` starts a comment that runs to the end
//! of the line. A leading byte order mark is skipped.

use std::iter::Peekable;
use std::str::Chars;

use super::model::Pos;

/// What a token is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Tok {
    /// An unquoted word: `[A-Za-z0-9.\-@_/:\[\]]+`.
    Word(String),
    /// A `"quoted string"` (without the quotes; no escapes).
    Str(String),
    LBrace,
    RBrace,
    Semi,
    Eof,
}

impl Tok {
    /// How the token reads in an error message.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("\"{w}\""),
            Tok::Str(s) => format!("quoted string \"{s}\""),
            Tok::LBrace => "`{`".to_string(),
            Tok::RBrace => "`}`".to_string(),
            Tok::Semi => "`;`".to_string(),
            Tok::Eof => "end of file".to_string(),
        }
    }
}

/// A token and where it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    pub kind: Tok,
    pub pos: Pos,
}

/// A lexical error: where, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LexError {
    pub pos: Pos,
    pub msg: String,
}

/// Whether `c` may appear in an unquoted word.
pub(crate) fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '@' | '_' | '/' | ':' | '[' | ']')
}

/// Whether `s` can be written unquoted (it lexes back as one word).
pub(crate) fn is_word(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_word_char)
}

/// Splits vit.conf text into tokens, one at a time.
pub(crate) struct Lexer<'a> {
    chars: Peekable<Chars<'a>>,
    line: u32,
    col: u32,
}

/// The position of the character that would follow `text`, counted as the lexer counts.
pub(crate) fn end_pos(text: &str) -> Pos {
    let mut lexer = Lexer::new(text);
    while lexer.bump().is_some() {}
    lexer.pos()
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        Lexer {
            chars: text.chars().peekable(),
            line: 1,
            col: 1,
        }
    }

    fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            col: self.col,
        }
    }

    /// Consumes one character, keeping line and column up to date.
    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c == '\n' {
            self.line = self.line.saturating_add(1);
            self.col = 1;
        } else {
            self.col = self.col.saturating_add(1);
        }
        Some(c)
    }

    /// Skips whitespace and comments.
    fn skip_blank(&mut self) {
        while let Some(&c) = self.chars.peek() {
            if c == '#' {
                while self.chars.peek().is_some_and(|&c| c != '\n') {
                    self.bump();
                }
            } else if c.is_whitespace() {
                self.bump();
            } else {
                break;
            }
        }
    }

    /// The next token; `Tok::Eof` at the end (and forever after).
    pub(crate) fn next_token(&mut self) -> Result<Token, LexError> {
        self.skip_blank();
        let pos = self.pos();
        let Some(&c) = self.chars.peek() else {
            return Ok(Token {
                kind: Tok::Eof,
                pos,
            });
        };
        let kind = match c {
            '{' => self.single(Tok::LBrace),
            '}' => self.single(Tok::RBrace),
            ';' => self.single(Tok::Semi),
            '"' => self.quoted(pos)?,
            c if is_word_char(c) => self.word(),
            c => {
                return Err(LexError {
                    pos,
                    msg: format!("unexpected character '{}'", c.escape_debug()),
                });
            }
        };
        Ok(Token { kind, pos })
    }

    fn single(&mut self, kind: Tok) -> Tok {
        self.bump();
        kind
    }

    fn word(&mut self) -> Tok {
        let mut w = String::new();
        while let Some(&c) = self.chars.peek() {
            if !is_word_char(c) {
                break;
            }
            w.push(c);
            self.bump();
        }
        Tok::Word(w)
    }

    fn quoted(&mut self, open: Pos) -> Result<Tok, LexError> {
        self.bump();
        let mut s = String::new();
        loop {
            let here = self.pos();
            match self.bump() {
                Some('"') => return Ok(Tok::Str(s)),
                Some('\n') | None => {
                    return Err(LexError {
                        pos: open,
                        msg:
                            "unterminated quoted string (a string ends with `\"` on the same line)"
                                .to_string(),
                    });
                }
                Some(c) if c.is_control() => {
                    return Err(LexError {
                        pos: here,
                        msg: format!("control character '{}' in quoted string", c.escape_debug()),
                    });
                }
                Some(c) => s.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex_all(text: &str) -> Result<Vec<(Tok, u32, u32)>, LexError> {
        let mut lx = Lexer::new(text);
        let mut out = Vec::new();
        loop {
            let t = lx.next_token()?;
            let end = t.kind == Tok::Eof;
            out.push((t.kind, t.pos.line, t.pos.col));
            if end {
                return Ok(out);
            }
        }
    }

    fn w(s: &str) -> Tok {
        Tok::Word(s.to_string())
    }

    #[test]
    fn words_strings_braces_and_positions() {
        let toks = lex_all("target iqn.x:y {\n\talias \"a b\";\n}").unwrap();
        assert_eq!(
            toks,
            vec![
                (w("target"), 1, 1),
                (w("iqn.x:y"), 1, 8),
                (Tok::LBrace, 1, 16),
                (w("alias"), 2, 2),
                (Tok::Str("a b".into()), 2, 8),
                (Tok::Semi, 2, 13),
                (Tok::RBrace, 3, 1),
                (Tok::Eof, 3, 2),
            ]
        );
    }

    #[test]
    fn word_characters_include_brackets_and_at() {
        let toks = lex_all("[::1]:3260 a@b_c/d").unwrap();
        assert_eq!(toks[0].0, w("[::1]:3260"));
        assert_eq!(toks[1].0, w("a@b_c/d"));
    }

    #[test]
    fn comments_run_to_end_of_line() {
        let toks = lex_all("# c1 \"x\n debug 1 # c2 {\n").unwrap();
        assert_eq!(
            toks,
            vec![(w("debug"), 2, 2), (w("1"), 2, 8), (Tok::Eof, 3, 1)]
        );
    }

    #[test]
    fn unicode_whitespace_separates_and_columns_count_characters() {
        let toks = lex_all("}\u{a0}\u{a0}x é").unwrap_err();
        // 'é' is not a word character: column counts characters, not bytes.
        assert_eq!((toks.pos.line, toks.pos.col), (1, 6));
        let toks = lex_all("}\u{a0}\u{a0}").unwrap();
        assert_eq!(toks, vec![(Tok::RBrace, 1, 1), (Tok::Eof, 1, 4)]);
    }

    #[test]
    fn stray_character_is_an_error_with_position() {
        let e = lex_all("debug 1\n  maxproc = 3").unwrap_err();
        assert_eq!((e.pos.line, e.pos.col), (2, 11));
        assert_eq!(e.msg, "unexpected character '='");
    }

    #[test]
    fn quoted_string_cannot_span_lines_or_run_to_eof() {
        let e = lex_all("alias \"abc\ndef\"").unwrap_err();
        assert_eq!((e.pos.line, e.pos.col), (1, 7));
        assert!(e.msg.contains("unterminated"));
        let e = lex_all("x \"abc").unwrap_err();
        assert_eq!((e.pos.line, e.pos.col), (1, 3));
    }

    #[test]
    fn quoted_string_refuses_control_characters() {
        let e = lex_all("alias \"a\tb\"").unwrap_err();
        assert_eq!((e.pos.line, e.pos.col), (1, 9));
        assert_eq!(e.msg, "control character '\\t' in quoted string");
    }

    #[test]
    fn quoted_string_keeps_hash_and_braces() {
        let toks = lex_all("\"#{ };\"").unwrap();
        assert_eq!(toks[0].0, Tok::Str("#{ };".into()));
    }

    #[test]
    fn leading_bom_is_skipped() {
        let toks = lex_all("\u{feff}debug").unwrap();
        assert_eq!(toks[0], (w("debug"), 1, 1));
    }

    #[test]
    fn is_word_matches_lexer() {
        assert!(is_word("vmk0:3260"));
        assert!(!is_word(""));
        assert!(!is_word("a b"));
        assert!(!is_word("a#b"));
    }
}
