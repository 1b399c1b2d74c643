"""Protocol fidelity: Kingdee's official Python SDK (kingdee.cdp.webapi.sdk) drives the sandbox over HTTP."""

from __future__ import annotations

import json
from typing import Any

import pytest
from k3cloud_webapi_sdk.main import K3CloudApiSdk

from connector.sandbox import RunningSandbox, start_sandbox


def _sdk(sb: RunningSandbox, secret: str | None = None, user: str = "demo") -> K3CloudApiSdk:
    cfg = sb.server.state.config
    app_id = next(iter(cfg.apps))
    sdk = K3CloudApiSdk(sb.url)
    sdk.InitConfig(cfg.data_centre, user, app_id, secret or cfg.apps[app_id]["secret"], sb.url)
    return sdk


def _model(**entry_changes: Any) -> dict[str, Any]:
    line = {"FCURRENCYID": {"FNumber": "PRE001"}, "FEXCHANGERATETYPE": {"FNumber": "HLTX01_SYS"},
            "FEXCHANGERATE": 1, "FAMOUNTFOR": 100}
    return {"FAccountBookID": {"FNumber": "001"}, "FDate": "2026-11-12", "FVOUCHERGROUPID": {"FNumber": "PRE001"},
            "FVOUCHERGROUPNO": "", "FDocumentStatus": "A", "FEntity": [
                {**line, "FEXPLANATION": "SDK test [kdcdc:sdk-1]", "FACCOUNTID": {"FNumber": "1002"},
                 "FDetailID": {"FDETAILID__FF100002": {"FNumber": "6222000011112222"}}, "FDEBIT": 100, "FCREDIT": 0,
                 "FDC": 1},
                {**line, "FEXPLANATION": "SDK test", "FACCOUNTID": {"FNumber": "1122"},
                 "FDetailID": {"FDETAILID__FFLEX6": {"FNumber": "C0001"}}, "FDEBIT": 0, "FCREDIT": 100, "FDC": -1,
                 **entry_changes}]}


def test_signed_header_save_view_query_submit_audit(sandbox: RunningSandbox) -> None:
    sdk = _sdk(sandbox)
    saved = json.loads(sdk.Save("GL_VOUCHER", {"Model": _model(), "NeedReturnFields": ["FBillNo"]}))
    status = saved["Result"]["ResponseStatus"]
    assert status["IsSuccess"] is True and status["MsgCode"] == 0
    vid, number = saved["Result"]["Id"], saved["Result"]["Number"]
    assert status["SuccessEntitys"] == [{"Id": vid, "Number": number, "DIndex": 0}]
    assert sdk.cookiesStore.SID  # the server issued kdservice-sessionid and the SDK keeps it
    view = json.loads(sdk.View("GL_VOUCHER", {"Id": vid}))
    assert view["Result"]["Result"]["BillNo"] == number and view["Result"]["Result"]["DocumentStatus"] == "A"
    rows = json.loads(sdk.ExecuteBillQuery({"FormId": "GL_VOUCHER", "FieldKeys": "FVOUCHERID,FBillNo,FACCOUNTID.FNumber",
                                            "FilterString": "FEXPLANATION like '%kdcdc:sdk-1%' and "
                                                            "FAccountBookID.FNumber = '001'"}))
    assert rows == [[int(vid), number, "1002"]]
    assert json.loads(sdk.Submit("GL_VOUCHER", {"Ids": vid}))["Result"]["ResponseStatus"]["IsSuccess"]
    assert json.loads(sdk.Audit("GL_VOUCHER", {"Ids": vid}))["Result"]["ResponseStatus"]["IsSuccess"]
    assert json.loads(sdk.View("GL_VOUCHER", {"Id": vid}))["Result"]["Result"]["DocumentStatus"] == "C"
    # An audited voucher cannot be deleted.
    deleted = json.loads(sdk.Delete("GL_VOUCHER", {"Ids": vid}))["Result"]["ResponseStatus"]
    assert deleted["IsSuccess"] is False and deleted["MsgCode"] == 12


def test_documented_error_envelopes(sandbox: RunningSandbox) -> None:
    sdk = _sdk(sandbox)
    missing = json.loads(sdk.Save("GL_VOUCHER", {"Model": _model(FDetailID={})}))["Result"]["ResponseStatus"]
    assert missing["IsSuccess"] is False and missing["MsgCode"] == 11
    assert missing["Errors"] == [{"FieldName": "FVOUCHERID", "DIndex": 0,
                                  "Message": "第2行分录：科目（1122-应收账款）设置的下列必录维度未录入或不可用：客户"}]
    unbalanced = json.loads(sdk.Save("GL_VOUCHER", {"Model": _model(FCREDIT=99)}))["Result"]["ResponseStatus"]
    assert unbalanced["MsgCode"] == 11 and "借贷不平衡" in unbalanced["Errors"][0]["Message"]
    array_dims = json.loads(sdk.Save("GL_VOUCHER", {"Model": _model(FDetailID=[{"FDETAILID__FFLEX6": "C1"}])}))
    assert "JSONArray" in array_dims["Result"]["ResponseStatus"]["Errors"][0]["Message"]
    batch = json.loads(sdk.BatchSave("GL_VOUCHER", {"Model": [_model(), _model(FCREDIT=1), _model()]}))
    st = batch["Result"]["ResponseStatus"]
    assert [e["DIndex"] for e in st["SuccessEntitys"]] == [0, 2] and {e["DIndex"] for e in st["Errors"]} == {1}
    wrong = _sdk(sandbox, secret="not-the-secret")
    lost = json.loads(wrong.Save("GL_VOUCHER", {"Model": _model()}))["Result"]["ResponseStatus"]
    assert lost["MsgCode"] == 1 and lost["Errors"][0]["Message"] == "会话信息已丢失，请重新登录"
    bad_query = json.loads(sdk.ExecuteBillQuery({"FormId": "NOPE", "FieldKeys": "FBillNo"}))
    assert bad_query[0][0]["Result"]["ResponseStatus"]["IsSuccess"] is False  # the nested error form


def test_our_client_talks_to_the_sandbox_with_every_login_mode(sandbox: RunningSandbox) -> None:
    from connector.kingdee import KingdeeBusinessError, KingdeeClient, KingdeeCredentials

    cfg = sandbox.server.state.config
    app_id = next(iter(cfg.apps))
    for auth, password in (("signed", ""), ("login_by_sign", ""), ("login_by_app_secret", ""),
                           ("password", "demo-password")):
        client = KingdeeClient(KingdeeCredentials(server_url=sandbox.url, acct_id=cfg.data_centre, username="demo",
                                                  app_id=app_id, app_secret=cfg.apps[app_id]["secret"], auth=auth,
                                                  password=password))
        with client:
            r = client.save("GL_VOUCHER", _model())
            assert r.ok and r.id and r.number, auth
            bad = client.save("GL_VOUCHER", _model(FCREDIT=5))  # item errors come back as values (DIndex)
            assert not bad.ok and "借贷不平衡" in bad.messages[0]
            with pytest.raises(KingdeeBusinessError, match="表单不存在"):  # call-level errors raise
                client.execute_bill_query("NOPE", ["FBillNo"])


def test_async_batch_save_mode(sandbox: RunningSandbox) -> None:
    from connector.kingdee import KingdeeClient, KingdeeCredentials

    cfg = sandbox.server.state.config
    app_id = next(iter(cfg.apps))
    with KingdeeClient(KingdeeCredentials(server_url=sandbox.url, acct_id=cfg.data_centre, username="demo",
                                          app_id=app_id, app_secret=cfg.apps[app_id]["secret"])) as client:
        results = client.batch_save_async("GL_VOUCHER", [_model(), _model(FCREDIT=3), _model()], poll_s=0.01)
    assert [r.ok for r in results] == [True, False, True] and results[0].number != results[2].number
    assert "借贷不平衡" in results[1].messages[0]


def test_sandbox_persists_to_postgresql_across_restarts(pg_dsn: str) -> None:
    from connector.sandbox import DEFAULT_CONFIG, SandboxConfig

    cfg = SandboxConfig.load(DEFAULT_CONFIG)
    cfg.persist_dsn = pg_dsn
    first = start_sandbox(cfg)
    saved = json.loads(_sdk(first).Save("GL_VOUCHER", {"Model": _model()}))["Result"]
    assert json.loads(_sdk(first).Submit("GL_VOUCHER", {"Ids": saved["Id"]}))["Result"]["ResponseStatus"]["IsSuccess"]
    first.stop()
    second = start_sandbox(cfg)  # a new process would do the same: state comes back from PostgreSQL
    try:
        sdk = _sdk(second)
        view = json.loads(sdk.View("GL_VOUCHER", {"Id": saved["Id"]}))["Result"]["Result"]
        assert view["BillNo"] == saved["Number"] and view["DocumentStatus"] == "B"
        again = json.loads(sdk.Save("GL_VOUCHER", {"Model": _model()}))["Result"]
        assert int(again["Id"]) == int(saved["Id"]) + 1 and again["Number"].endswith("00002")  # numbering continues
    finally:
        second.stop()
