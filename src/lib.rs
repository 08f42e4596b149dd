pub mod pb {
    tonic::include_proto!("presence.v1");
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("presence_descriptor");
}
