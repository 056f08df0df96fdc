//! [`labels!`]: the one definition of a metric-label enum.

/// Defines a field-less `#[repr(u8)]` enum whose variants label a metric, with the value of
/// each variant (an index into counter arrays), `COUNT`, `ALL` (in value order), `as_str`
/// (the registry member name) and `from_name`. Values must be dense from 0, so `ALL[v as
/// usize] == v` (asserted at compile time).
///
/// ```
/// mesh_types::labels! {
///     /// How a thing ended.
///     pub enum Outcome {
///         /// It worked.
///         Sent = 0 => "sent",
///         /// It did not.
///         Unsent = 1 => "unsent",
///     }
/// }
/// assert_eq!(Outcome::COUNT, 2);
/// assert_eq!(Outcome::ALL[1].as_str(), "unsent");
/// assert_eq!(Outcome::from_name("sent"), Some(Outcome::Sent));
/// ```
#[macro_export]
macro_rules! labels {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $label:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant = $value ),+
        }

        impl $name {
            /// Number of variants.
            pub const COUNT: usize = [$($name::$variant),+].len();
            /// Every variant, in value order.
            pub const ALL: [$name; $name::COUNT] = [$($name::$variant),+];

            /// The registry member name (the metric attribute's value).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $label ),+
                }
            }

            /// The variant whose registry name is `name`.
            pub fn from_name(name: &str) -> Option<$name> {
                match name {
                    $( $label => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        const _: () = {
            let mut i = 0;
            while i < $name::COUNT {
                assert!($name::ALL[i] as usize == i, "label values must be dense from 0");
                i += 1;
            }
        };
    };
}

#[cfg(test)]
mod tests {
    labels! {
        /// A test enum.
        enum Colour {
            /// Red.
            Red = 0 => "red",
            /// Green.
            Green = 1 => "green",
            /// Blue.
            Blue = 2 => "blue",
        }
    }

    #[test]
    fn all_count_and_names_agree() {
        assert_eq!(Colour::COUNT, 3);
        for (i, c) in Colour::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            assert_eq!(Colour::from_name(c.as_str()), Some(*c));
        }
        assert_eq!(Colour::Blue.as_str(), "blue");
        assert_eq!(Colour::from_name("mauve"), None);
    }
}
