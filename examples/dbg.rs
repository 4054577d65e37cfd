use vit::scsi::*;
fn main() {
    let server = DeviceServer::new(vec![LunInfo::new(0, 512, 131072, 0x42, "SN0")]).unwrap();
    let port = TargetPort {
        target_name: "iqn.2026-01.com.example:t".into(),
        portal_group_tag: 1,
        relative_port_id: 1,
    };
    let mut nexus = Nexus::without_attention(port);
    for cdb in [
        [0x2fu8, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        [0x2f, 0x10, 0, 0, 0, 0, 0, 0, 1, 0],
    ] {
        let req = Request {
            lun: encode_lun(0),
            cdb: &cdb,
            data_out: &[0u8; 512],
        };
        let mut data_in = vec![0u8; 4096];
        println!("{:?}", execute(&server, &mut nexus, &req, &mut data_in));
    }
}
