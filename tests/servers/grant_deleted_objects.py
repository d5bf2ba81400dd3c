"""Grant an account List Contents + Read Property on CN=Deleted Objects (what docs/security.md
tells AD admins to do with dsacls), so it can read tombstones.  Runs under Debian's python3, which
has the samba bindings: python3 grant_deleted_objects.py SMB_CONF SAM_LDB BASE_DN SAMACCOUNTNAME
"""
import sys

import ldb
from samba.auth import system_session
from samba.dcerpc import security
from samba.ndr import ndr_pack, ndr_unpack
from samba.param import LoadParm
from samba.samdb import SamDB

smb_conf, sam_ldb, base, sam = sys.argv[1:5]
lp = LoadParm(); lp.load(smb_conf)
db = SamDB(url=sam_ldb, session_info=system_session(), lp=lp)
sid = db.search(base=base, expression=f"(sAMAccountName={sam})", attrs=["objectSid"])[0]["objectSid"][0]
sid = str(ndr_unpack(security.dom_sid, sid))
dn = "CN=Deleted Objects," + base
controls = ["show_deleted:1", "sd_flags:1:4"]
res = db.search(base=dn, scope=ldb.SCOPE_BASE, attrs=["nTSecurityDescriptor"], controls=controls)
domain_sid = security.dom_sid(db.get_domain_sid())
sd = ndr_unpack(security.descriptor, res[0]["nTSecurityDescriptor"][0])
sddl = sd.as_sddl(domain_sid) + f"(A;;LCRP;;;{sid})"
new = security.descriptor.from_sddl(sddl, domain_sid)
m = ldb.Message(); m.dn = ldb.Dn(db, dn)
m["nTSecurityDescriptor"] = ldb.MessageElement(ndr_pack(new), ldb.FLAG_MOD_REPLACE, "nTSecurityDescriptor")
db.modify(m, controls=controls)
print("granted", sid)
