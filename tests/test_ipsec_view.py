"""The lab's report: IKE SAs from pluto's log, algorithm names in IKE's words."""

import pytest

from ikecommon.xfrm import AlgorithmInfo
from netns_tests.harness.ipsec_view import IkeSa, ike_sas_from_log


@pytest.mark.parametrize(("algo", "label"), [
    (AlgorithmInfo("aead", "rfc4106(gcm(aes))", 288, 128), "AES_GCM_16_256"),
    (AlgorithmInfo("aead", "rfc4106(gcm(aes))", 160, 128), "AES_GCM_16_128"),
    (AlgorithmInfo("crypt", "cbc(aes)", 256), "AES_CBC_256"),
    (AlgorithmInfo("auth", "hmac(sha256)", 256, 128), "HMAC_SHA2_256_128"),
    (AlgorithmInfo("crypt", "cbc(des3_ede)", 192), "cbc(des3_ede) (192-bit key)"),
])
def test_algorithm_labels(algo, label):
    assert algo.label == label


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
