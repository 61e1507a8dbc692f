# Debian's xsimd 8.1 exports a target whose INTERFACE_LINK_LIBRARIES names "xtl" without
# finding it, so linking xsimd adds -lxtl and the link fails. xsimd 8 does not need xtl;
# an empty imported target of that name makes the reference resolve to nothing.
if(TARGET xsimd AND NOT TARGET xtl)
  add_library(xtl INTERFACE IMPORTED)
endif()
