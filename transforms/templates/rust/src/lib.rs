//! A hosepipe transform to copy: uppercases each record, drops empty ones, and rejects records
//! that are not UTF-8. Replace `process` with your logic.

use hosepipe_transform::{Outcome, Params, Record, Transform};

#[derive(Debug)]
pub struct MyTransform {
    /// Set by the processor parameter `Suffix` (optional).
    suffix: String,
}

impl Transform for MyTransform {
    fn init(params: &Params) -> Result<Self, String> {
        Ok(MyTransform {
            suffix: params.get("Suffix").unwrap_or_default().to_string(),
        })
    }

    fn process<'a>(&mut self, record: Record<'a>) -> Outcome<'a> {
        if record.data.is_empty() {
            return Outcome::Dropped;
        }
        match std::str::from_utf8(record.data) {
            Ok(text) => Outcome::ok(format!("{}{}", text.to_uppercase(), self.suffix)),
            Err(e) => Outcome::failed(format!("not UTF-8: {e}")),
        }
    }
}

hosepipe_transform::export_transform!(MyTransform);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uppercases_drops_and_fails() {
        let mut t = MyTransform::init(&Params::new([("Suffix", "!")])).unwrap();
        assert_eq!(t.process(Record::new("hi")), Outcome::ok("HI!"));
        assert_eq!(t.process(Record::new("")), Outcome::Dropped);
        assert!(matches!(
            t.process(Record::new(&[0xff])),
            Outcome::Failed(_)
        ));
    }
}
