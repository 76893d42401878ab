//! `listed_enum!`: a fieldless enum declared together with `ALL`, the list of its variants,
//! so that no list of variants is kept by hand beside the enum.
//!
//! A list kept by hand can miss a new variant with nothing failing: the role table's test,
//! the rotation's floors or the trust root's checks would then skip it. Written through this
//! macro, `ALL` is the declaration itself. The code that must treat each variant in its own
//! way matches on it with no catch-all arm, so a new variant does not compile until each of
//! those places decides.

/// Declares the enum as written and `impl $name { pub const ALL: [Self; N] }`, every variant
/// in the order declared. Only fieldless variants, each followed by a comma.
macro_rules! listed_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident, )+
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every variant, in the order declared (made by `listed_enum!`, so none is
            /// left out).
            pub const ALL: [Self; [$($name::$variant),+].len()] = [$($name::$variant),+];
        }
    };
}
