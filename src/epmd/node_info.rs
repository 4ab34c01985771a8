//! What a node registers about itself besides its name and port, and what EPMD gives
//! back for it in PORT2_RESP: its type, protocol, dist versions and extra field. One
//! value, held by the request, the registry, the reply and a routed name's lease.

/// A node's type, as ALIVE2_REQ carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeType {
    /// `M` (77): a normal node.
    Normal,
    /// `H` (72): a hidden node.
    Hidden,
    /// Any other byte: epmd stores it as sent, and so does distgate.
    Other(u8),
}

impl NodeType {
    /// The byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            NodeType::Normal => b'M',
            NodeType::Hidden => b'H',
            NodeType::Other(byte) => byte,
        }
    }
}

impl From<u8> for NodeType {
    fn from(byte: u8) -> NodeType {
        match byte {
            b'M' => NodeType::Normal,
            b'H' => NodeType::Hidden,
            other => NodeType::Other(other),
        }
    }
}

/// What a node registered about itself, echoed to peers in PORT2_RESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Normal or hidden.
    pub node_type: NodeType,
    /// 0: TCP/IPv4.
    pub protocol: u8,
    /// Highest distribution version the node speaks.
    pub highest_version: u16,
    /// Lowest distribution version the node speaks.
    pub lowest_version: u16,
    /// The extra field, as registered.
    pub extra: Vec<u8>,
}

impl NodeInfo {
    /// What an OTP 23+ node registers: a normal node over TCP, versions 5–6, no extra.
    /// Also what the gateway answers for a discovered name not yet confirmed upstream.
    pub const OTP23: NodeInfo = NodeInfo {
        node_type: NodeType::Normal,
        protocol: 0,
        highest_version: 6,
        lowest_version: 5,
        extra: Vec::new(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_byte_round_trips() {
        for byte in 0..=u8::MAX {
            assert_eq!(NodeType::from(byte).byte(), byte);
        }
        assert_eq!(NodeType::from(b'H'), NodeType::Hidden);
        assert_eq!(NodeType::from(77), NodeType::Normal);
    }
}
