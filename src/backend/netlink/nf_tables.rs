//! nf_tables' numbers: message types, the attributes kproxy's requests and the
//! notification reader name (from `linux/netfilter/nf_tables.h`), set flags, verdict
//! codes, and the types of nft's userdata TLVs (libnftnl `udata.h`) that carry comments
//! and `typeof` declarations. libnftnl writes and parses the objects themselves
//! ([`super::libnftnl`]).
//!
//! Must not: encode or parse anything.

/// nf_tables constants; the netlink and nfnetlink constants of
/// [`crate::netlink::wire::c`] are brought in so that encoder and decoder name every
/// constant `c::…`.
#[allow(dead_code)]
pub mod c {
    pub use crate::netlink::wire::c::*;

    pub const NFNL_SUBSYS_NFTABLES: u16 = 10;

    pub const NFT_MSG_NEWTABLE: u16 = 0;
    pub const NFT_MSG_GETTABLE: u16 = 1;
    pub const NFT_MSG_DELTABLE: u16 = 2;
    pub const NFT_MSG_NEWCHAIN: u16 = 3;
    pub const NFT_MSG_GETCHAIN: u16 = 4;
    pub const NFT_MSG_DELCHAIN: u16 = 5;
    pub const NFT_MSG_NEWRULE: u16 = 6;
    pub const NFT_MSG_GETRULE: u16 = 7;
    pub const NFT_MSG_DELRULE: u16 = 8;
    pub const NFT_MSG_NEWSET: u16 = 9;
    pub const NFT_MSG_GETSET: u16 = 10;
    pub const NFT_MSG_DELSET: u16 = 11;
    pub const NFT_MSG_NEWSETELEM: u16 = 12;
    pub const NFT_MSG_GETSETELEM: u16 = 13;
    pub const NFT_MSG_DELSETELEM: u16 = 14;
    pub const NFT_MSG_NEWGEN: u16 = 15;
    pub const NFT_MSG_GETGEN: u16 = 16;
    pub const NFT_MSG_NEWOBJ: u16 = 18;
    pub const NFT_MSG_DELOBJ: u16 = 20;
    pub const NFT_MSG_NEWFLOWTABLE: u16 = 22;
    pub const NFT_MSG_DELFLOWTABLE: u16 = 24;
    /// `destroy` (kernel >= 6.3): as DEL, without ENOENT. Notified as DEL*, accepted
    /// here anyway.
    pub const NFT_MSG_DESTROYTABLE: u16 = 26;
    pub const NFT_MSG_DESTROYCHAIN: u16 = 27;
    pub const NFT_MSG_DESTROYRULE: u16 = 28;
    pub const NFT_MSG_DESTROYSET: u16 = 29;
    pub const NFT_MSG_DESTROYSETELEM: u16 = 30;

    // Tables.
    pub const NFTA_TABLE_NAME: u16 = 1;
    pub const NFTA_TABLE_FLAGS: u16 = 2;
    pub const NFTA_TABLE_USERDATA: u16 = 6;
    // Chains.
    pub const NFTA_CHAIN_TABLE: u16 = 1;
    pub const NFTA_CHAIN_NAME: u16 = 3;
    pub const NFTA_CHAIN_HOOK: u16 = 4;
    pub const NFTA_CHAIN_POLICY: u16 = 5;
    pub const NFTA_CHAIN_TYPE: u16 = 7;
    pub const NFTA_CHAIN_USERDATA: u16 = 12;
    pub const NFTA_HOOK_HOOKNUM: u16 = 1;
    pub const NFTA_HOOK_PRIORITY: u16 = 2;
    // Rules.
    pub const NFTA_RULE_TABLE: u16 = 1;
    pub const NFTA_RULE_CHAIN: u16 = 2;
    pub const NFTA_RULE_HANDLE: u16 = 3;
    pub const NFTA_RULE_EXPRESSIONS: u16 = 4;
    pub const NFTA_RULE_USERDATA: u16 = 7;
    pub const NFTA_LIST_ELEM: u16 = 1;
    pub const NFTA_EXPR_NAME: u16 = 1;
    pub const NFTA_EXPR_DATA: u16 = 2;
    // Sets.
    pub const NFTA_SET_TABLE: u16 = 1;
    pub const NFTA_SET_NAME: u16 = 2;
    pub const NFTA_SET_FLAGS: u16 = 3;
    pub const NFTA_SET_KEY_TYPE: u16 = 4;
    pub const NFTA_SET_KEY_LEN: u16 = 5;
    pub const NFTA_SET_DATA_TYPE: u16 = 6;
    pub const NFTA_SET_DATA_LEN: u16 = 7;
    pub const NFTA_SET_DESC: u16 = 9;
    pub const NFTA_SET_ID: u16 = 10;
    pub const NFTA_SET_TIMEOUT: u16 = 11;
    pub const NFTA_SET_USERDATA: u16 = 13;
    pub const NFTA_SET_DESC_SIZE: u16 = 1;
    pub const NFTA_SET_DESC_CONCAT: u16 = 2;
    pub const NFTA_SET_FIELD_LEN: u16 = 1;
    pub const NFT_SET_CONSTANT: u32 = 0x2;
    pub const NFT_SET_INTERVAL: u32 = 0x4;
    pub const NFT_SET_MAP: u32 = 0x8;
    pub const NFT_SET_TIMEOUT: u32 = 0x10;
    pub const NFT_SET_EVAL: u32 = 0x20;
    /// Not in older uapi headers; the kernel wants it with NFTA_SET_DESC_CONCAT (5.6+).
    pub const NFT_SET_CONCAT: u32 = 0x80;
    // Set elements.
    pub const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
    pub const NFTA_SET_ELEM_LIST_SET: u16 = 2;
    pub const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
    pub const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
    pub const NFTA_SET_ELEM_KEY: u16 = 1;
    pub const NFTA_SET_ELEM_DATA: u16 = 2;
    pub const NFTA_SET_ELEM_FLAGS: u16 = 3;
    pub const NFTA_SET_ELEM_USERDATA: u16 = 6;
    pub const NFTA_SET_ELEM_KEY_END: u16 = 10;
    pub const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
    // Data.
    pub const NFTA_DATA_VALUE: u16 = 1;
    pub const NFTA_DATA_VERDICT: u16 = 2;
    pub const NFTA_VERDICT_CODE: u16 = 1;
    pub const NFTA_VERDICT_CHAIN: u16 = 2;
    pub const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
    pub const NF_DROP: i32 = 0;
    pub const NF_ACCEPT: i32 = 1;
    pub const NFT_CONTINUE: i32 = -1;
    pub const NFT_BREAK: i32 = -2;
    pub const NFT_JUMP: i32 = -3;
    pub const NFT_GOTO: i32 = -4;
    pub const NFT_RETURN: i32 = -5;
    // Generation.
    pub const NFTA_GEN_ID: u16 = 1;
    pub const NFTA_GEN_PROC_PID: u16 = 2;
    pub const NFTA_GEN_PROC_NAME: u16 = 3;
    // Stateful objects and flowtables: only their table is read.
    pub const NFTA_OBJ_TABLE: u16 = 1;
    pub const NFTA_FLOWTABLE_TABLE: u16 = 1;

    // nft's userdata TLVs (libnftnl `udata.h`; one-byte type, one-byte length).
    pub const UDATA_TABLE_COMMENT: u8 = 0;
    pub const UDATA_CHAIN_COMMENT: u8 = 0;
    pub const UDATA_RULE_COMMENT: u8 = 0;
    pub const UDATA_SET_ELEM_COMMENT: u8 = 0;
    pub const UDATA_SET_ELEM_FLAGS: u8 = 1;
    pub const UDATA_SET_ELEM_F_INTERVAL_OPEN: u32 = 1;
    pub const UDATA_SET_KEYBYTEORDER: u8 = 0;
    pub const UDATA_SET_DATABYTEORDER: u8 = 1;
    pub const UDATA_SET_KEY_TYPEOF: u8 = 3;
    pub const UDATA_SET_DATA_TYPEOF: u8 = 4;
    pub const UDATA_SET_DATA_INTERVAL: u8 = 6;
    pub const UDATA_SET_COMMENT: u8 = 7;
    pub const UDATA_TYPEOF_EXPR: u8 = 0;
    pub const UDATA_TYPEOF_DATA: u8 = 1;
}
