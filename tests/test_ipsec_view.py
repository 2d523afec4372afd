"""Reading kernel SAs from iproute2's text and IKE SAs from pluto's log (the lab's report)."""

from pathlib import Path

from netns_tests.harness.ipsec_view import IkeSa, _parse_blocks, algorithm_name, ike_sas_from_log

VECTORS = Path(__file__).parent / "vectors" / "iproute2"


def test_tunnel_sas_and_larval_state_from_ip_s_xfrm_state():
    sas = _parse_blocks((VECTORS / "ip-s-xfrm-state-tunnel-and-larval.txt").read_text())
    assert [(sa.src, sa.dst, sa.spi, sa.mode) for sa in sas] == [
        ("10.77.2.53", "10.77.1.1", 0x87FC27DB, "tunnel"),
        ("10.77.1.1", "10.77.2.53", 0x58EFF14B, "tunnel"),
        ("10.77.1.1", "10.77.2.53", 0, "transport"),  # the larval (ACQUIRE) state
        ("10.77.1.1", "10.77.3.53", 0, "transport"),
    ]
    assert sas[0].algorithms == ("AES_GCM_16_256",)
    assert (sas[0].bytes, sas[0].packets) == (267, 4)
    assert (sas[1].bytes, sas[1].packets) == (355, 6)
    assert sas[2].algorithms == ()
    assert "proto tcp" in sas[2].selector


def test_no_key_material_is_kept():
    sas = _parse_blocks((VECTORS / "ip-s-xfrm-state-tunnel-and-larval.txt").read_text())
    assert "000102030405" not in repr(sas)


def test_algorithm_names():
    assert algorithm_name("aead", "rfc4106(gcm(aes))", 160, 128) == "AES_GCM_16_128"
    assert algorithm_name("enc", "cbc(aes)", 256, None) == "AES_CBC_256"
    assert algorithm_name("auth-trunc", "hmac(sha256)", 256, 128) == "HMAC_SHA2_256_128"
    assert algorithm_name("enc", "cbc(des3_ede)", 192, None) == "cbc(des3_ede) (192-bit key)"


LOG = """\
Nov 23 14:54:46.731714: "private-or-clear#10.77.2.53/32-(0--17--53)"[1] ...10.77.2.53 #1: initiator established IKE SA; authenticated peer using authby=null and ID_NULL 'ID_NULL'
Nov 23 14:55:10.725065: "trusted-udp" #4: initiator established IKE SA; authenticated peer 'P-256 ECDSA with SHA2_512' digital signature using preloaded certificate '@trusted.lab.example'
Nov 23 14:55:10.730472: "trusted-udp" #5: initiator established Child SA using #4; IPsec tunnel
"""  # noqa: E501


def test_ike_sas_from_pluto_log():
    sas = ike_sas_from_log(LOG, peers_by_conn={"trusted-udp": "10.77.4.53"})
    assert [s.peer for s in sas] == ["10.77.2.53", "10.77.4.53"]
    assert sas[0].method == "NULL auth (RFC 7619), unauthenticated"
    assert sas[1].method == "digital signature P-256 ECDSA with SHA2_512, ID @trusted.lab.example"


def test_conn_without_known_peer_is_left_out():
    assert ike_sas_from_log(LOG) == [IkeSa("10.77.2.53", "using authby=null and ID_NULL 'ID_NULL'")]
