"""The MobileFaceSwap student: identity injection network (IIN) + identity-aware dynamic network (IDN)."""
