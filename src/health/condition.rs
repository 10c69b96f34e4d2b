//! The condition language of metric checks: small expressions over a query's `result`.
//!
//! ```text
//! expr  := or
//! or    := and ("||" and)*
//! and   := not ("&&" not)*
//! not   := "!" not | cmp
//! cmp   := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?
//! sum   := prod (("+" | "-") prod)*
//! prod  := unary (("*" | "/") unary)*
//! unary := "-" unary | atom
//! atom  := NUMBER | "true" | "false" | "result" ("[" INTEGER "]")? | "len(result)" | "(" expr ")"
//! ```
//!
//! `result` is the query's value: a scalar, or a vector whose elements are read with `result[i]`.
//! A one-element vector may be used as a scalar. Parsed at `validate` time; evaluated per measurement.

use std::fmt;

/// A parse error at a character offset of the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at character {}: {}", self.offset + 1, self.message)
    }
}

/// What a query returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    Vector(Vec<f64>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Num(f64),
    Bool(bool),
    Result,
    Index(usize),
    Len,
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Bin(Op, Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Or,
    And,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum V {
    N(f64),
    B(bool),
}

/// Parses an expression; the error gives the offending character offset.
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    p.ws();
    if p.i == p.s.len() {
        return Err(p.err("empty condition: expected an expression like \"result[0] >= 0.99\""));
    }
    let e = p.or()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("unexpected text: expected an operator or the end"));
    }
    Ok(e)
}

/// Evaluates to a boolean, or says why it cannot.
pub fn eval(e: &Expr, result: &Value) -> Result<bool, String> {
    match ev(e, result)? {
        V::B(b) => Ok(b),
        V::N(n) => Err(format!(
            "the condition is a number ({n}), not true or false"
        )),
    }
}

fn scalar(result: &Value) -> Result<f64, String> {
    match result {
        Value::Scalar(v) => Ok(*v),
        Value::Vector(v) if v.len() == 1 => Ok(v[0]),
        Value::Vector(v) => Err(format!(
            "result has {} values: index it, like result[0]",
            v.len()
        )),
    }
}

fn ev(e: &Expr, r: &Value) -> Result<V, String> {
    Ok(match e {
        Expr::Num(n) => V::N(*n),
        Expr::Bool(b) => V::B(*b),
        Expr::Result => V::N(scalar(r)?),
        Expr::Index(i) => match r {
            Value::Vector(v) => V::N(*v.get(*i).ok_or_else(|| {
                format!("result[{i}] does not exist: result has {} values", v.len())
            })?),
            Value::Scalar(s) if *i == 0 => V::N(*s),
            Value::Scalar(_) => {
                return Err(format!("result[{i}] does not exist: result is a scalar"));
            }
        },
        Expr::Len => V::N(match r {
            Value::Vector(v) => v.len() as f64,
            Value::Scalar(_) => 1.0,
        }),
        Expr::Not(x) => V::B(!boolean(ev(x, r)?)?),
        Expr::Neg(x) => V::N(-number(ev(x, r)?)?),
        Expr::Bin(op, a, b) => {
            let a = ev(a, r)?;
            match op {
                Op::Or => V::B(boolean(a)? || boolean(ev(b, r)?)?),
                Op::And => V::B(boolean(a)? && boolean(ev(b, r)?)?),
                _ => {
                    let (x, y) = (number(a)?, number(ev(b, r)?)?);
                    match op {
                        Op::Lt => V::B(x < y),
                        Op::Le => V::B(x <= y),
                        Op::Gt => V::B(x > y),
                        Op::Ge => V::B(x >= y),
                        Op::Eq => V::B(x == y),
                        Op::Ne => V::B(x != y),
                        Op::Add => V::N(x + y),
                        Op::Sub => V::N(x - y),
                        Op::Mul => V::N(x * y),
                        Op::Div => V::N(x / y),
                        Op::Or | Op::And => unreachable!("handled above"),
                    }
                }
            }
        }
    })
}

fn boolean(v: V) -> Result<bool, String> {
    match v {
        V::B(b) => Ok(b),
        V::N(n) => Err(format!("{n} is a number where true or false was expected")),
    }
}

fn number(v: V) -> Result<f64, String> {
    match v {
        V::N(n) => Ok(n),
        V::B(b) => Err(format!("{b} is true or false where a number was expected")),
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, message: &str) -> ParseError {
        ParseError {
            offset: self.i,
            message: message.to_string(),
        }
    }

    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.ws();
        if self.s[self.i..].starts_with(tok.as_bytes()) {
            self.i += tok.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.and()?;
        while self.eat("||") {
            e = Expr::Bin(Op::Or, Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.not()?;
        while self.eat("&&") {
            e = Expr::Bin(Op::And, Box::new(e), Box::new(self.not()?));
        }
        Ok(e)
    }

    fn not(&mut self) -> Result<Expr, ParseError> {
        self.ws();
        if self.s.get(self.i) == Some(&b'!') && self.s.get(self.i + 1) != Some(&b'=') {
            self.i += 1;
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Expr, ParseError> {
        let a = self.sum()?;
        for (tok, op) in [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<", Op::Lt),
            (">", Op::Gt),
        ] {
            if self.eat(tok) {
                return Ok(Expr::Bin(op, Box::new(a), Box::new(self.sum()?)));
            }
        }
        self.ws();
        if self.s.get(self.i) == Some(&b'=') {
            return Err(self.err("\"=\" is not an operator: write \"==\""));
        }
        Ok(a)
    }

    fn sum(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.prod()?;
        loop {
            if self.eat("+") {
                e = Expr::Bin(Op::Add, Box::new(e), Box::new(self.prod()?));
            } else if self.eat("-") {
                e = Expr::Bin(Op::Sub, Box::new(e), Box::new(self.prod()?));
            } else {
                return Ok(e);
            }
        }
    }

    fn prod(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.unary()?;
        loop {
            if self.eat("*") {
                e = Expr::Bin(Op::Mul, Box::new(e), Box::new(self.unary()?));
            } else if self.eat("/") {
                e = Expr::Bin(Op::Div, Box::new(e), Box::new(self.unary()?));
            } else {
                return Ok(e);
            }
        }
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.eat("-") {
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Expr, ParseError> {
        self.ws();
        if self.eat("(") {
            let e = self.or()?;
            if !self.eat(")") {
                return Err(self.err("expected \")\""));
            }
            return Ok(e);
        }
        if self.eat("len(result)") {
            return Ok(Expr::Len);
        }
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric()
                || self.s[self.i] == b'_'
                || self.s[self.i] == b'.')
        {
            self.i += 1;
        }
        let word = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
        match word {
            "" => {
                self.i = start;
                Err(self.err("expected a number, \"result\", \"len(result)\" or \"(\""))
            }
            "true" => Ok(Expr::Bool(true)),
            "false" => Ok(Expr::Bool(false)),
            "result" => {
                if self.eat("[") {
                    self.ws();
                    let at = self.i;
                    while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                        self.i += 1;
                    }
                    let index: usize = std::str::from_utf8(&self.s[at..self.i])
                        .unwrap_or("")
                        .parse()
                        .map_err(|_| {
                            self.i = at;
                            self.err("expected an index like result[0]")
                        })?;
                    if !self.eat("]") {
                        return Err(self.err("expected \"]\""));
                    }
                    return Ok(Expr::Index(index));
                }
                Ok(Expr::Result)
            }
            w if w.starts_with(|c: char| c.is_ascii_digit() || c == '.') => {
                w.parse::<f64>().map(Expr::Num).map_err(|_| {
                    self.i = start;
                    self.err(&format!("{w:?} is not a number"))
                })
            }
            w => {
                self.i = start;
                Err(self.err(&format!("unknown name {w:?}: expected \"result\"")))
            }
        }
    }
}

/// The line a chart of the measurements can draw for a condition that compares the plotted value
/// (`result`, or `result[0]`) with a number: the comparison (`<`, `<=`, `>`, `>=`, `==`) read with
/// the value on the left, and the number. Any other condition has no single line.
pub fn threshold(e: &Expr) -> Option<(&'static str, f64)> {
    let Expr::Bin(op, l, r) = e else {
        return None;
    };
    let num = |e: &Expr| match e {
        Expr::Num(n) => Some(*n),
        Expr::Neg(inner) => match inner.as_ref() {
            Expr::Num(n) => Some(-*n),
            _ => None,
        },
        _ => None,
    };
    let plotted = |e: &Expr| matches!(e, Expr::Result | Expr::Index(0));
    let word = |op: Op, flipped: bool| match (op, flipped) {
        (Op::Lt, false) | (Op::Gt, true) => Some("<"),
        (Op::Le, false) | (Op::Ge, true) => Some("<="),
        (Op::Gt, false) | (Op::Lt, true) => Some(">"),
        (Op::Ge, false) | (Op::Le, true) => Some(">="),
        (Op::Eq, _) => Some("=="),
        _ => None,
    };
    if plotted(l) {
        Some((word(*op, false)?, num(r)?))
    } else if plotted(r) {
        Some((word(*op, true)?, num(l)?))
    } else {
        None
    }
}

#[cfg(test)]
mod threshold_tests {
    use super::*;

    #[test]
    fn a_comparison_of_the_plotted_value_with_a_number_is_a_line() {
        let t = |s: &str| threshold(&parse(s).unwrap());
        assert_eq!(t("result[0] <= 0.05"), Some(("<=", 0.05)));
        assert_eq!(t("result > 10"), Some((">", 10.0)));
        assert_eq!(t("0.99 <= result[0]"), Some((">=", 0.99)));
        assert_eq!(t("result[0] > -1"), Some((">", -1.0)));
        assert_eq!(t("result[1] < 3"), None);
        assert_eq!(t("result[0] < 3 && result[0] > 1"), None);
        assert_eq!(t("len(result) == 2"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(expr: &str, v: Value) -> Result<bool, String> {
        eval(&parse(expr).map_err(|e| e.to_string())?, &v)
    }

    #[test]
    fn comparisons_and_logic() {
        assert_eq!(t("result[0] >= 0.99", Value::Vector(vec![0.995])), Ok(true));
        assert_eq!(t("result < 0.5", Value::Scalar(0.7)), Ok(false));
        assert_eq!(
            t("result < 0.5 || result > 2", Value::Scalar(3.0)),
            Ok(true)
        );
        assert_eq!(
            t(
                "!(result == 1) && len(result) == 2",
                Value::Vector(vec![1.0, 2.0])
            ),
            Err("result has 2 values: index it, like result[0]".into())
        );
        assert_eq!(
            t(
                "result[1] / result[0] <= 0.05",
                Value::Vector(vec![100.0, 3.0])
            ),
            Ok(true)
        );
        assert_eq!(t("-result > -1", Value::Scalar(0.5)), Ok(true));
    }

    #[test]
    fn errors_point_at_the_problem() {
        assert_eq!(parse("result >= ").unwrap_err().offset, 10);
        let e = parse("reslt > 1").unwrap_err();
        assert_eq!(
            (e.offset, e.message.as_str()),
            (0, "unknown name \"reslt\": expected \"result\"")
        );
        assert!(
            parse("result = 1")
                .unwrap_err()
                .message
                .contains("write \"==\"")
        );
        assert!(parse("(result > 1").unwrap_err().message.contains("\")\""));
        assert!(parse("result[x]").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn missing_index_is_an_evaluation_error() {
        assert!(
            t("result[3] > 0", Value::Vector(vec![1.0]))
                .unwrap_err()
                .contains("does not exist")
        );
        assert!(
            t("result + 1", Value::Scalar(1.0))
                .unwrap_err()
                .contains("not true or false")
        );
    }
}
