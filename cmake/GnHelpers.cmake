# Shared build helpers: warnings, sanitizers and the one test registration function.

function(gn_setup_warnings_and_sanitizers)
  add_compile_options($<$<COMPILE_LANGUAGE:C>:-Wall> $<$<COMPILE_LANGUAGE:C>:-Wextra>
                      $<$<COMPILE_LANGUAGE:C>:-Wshadow> $<$<COMPILE_LANGUAGE:C>:-Wstrict-prototypes>
                      $<$<COMPILE_LANGUAGE:C>:-Wmissing-prototypes> $<$<COMPILE_LANGUAGE:C>:-Wno-unused-parameter>)
  if(GN_WERROR)
    add_compile_options($<$<COMPILE_LANGUAGE:C>:-Werror>)
  endif()
  if(GN_SANITIZE)
    add_compile_options($<$<COMPILE_LANGUAGE:C>:-fsanitize=address,undefined>
                        $<$<COMPILE_LANGUAGE:C>:-fno-omit-frame-pointer>
                        $<$<COMPILE_LANGUAGE:C>:-fno-sanitize-recover=undefined>)
    add_link_options(-fsanitize=address,undefined)
  endif()
endfunction()

# gn_add_test(NAME name SOURCES a.c ... [LIBS lib ...] [LABELS unit ...] [ARGS ...] [TIMEOUT s])
# One executable per module. Exit code 77 means "skipped" (e.g. no GPU).
function(gn_add_test)
  cmake_parse_arguments(T "" "NAME;TIMEOUT" "SOURCES;LIBS;LABELS;ARGS" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  target_include_directories(${T_NAME} PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS})
  add_test(NAME ${T_NAME} COMMAND ${T_NAME} ${T_ARGS})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  if(NOT T_LABELS)
    set(T_LABELS unit)
  endif()
  set_tests_properties(${T_NAME} PROPERTIES LABELS "${T_LABELS}" SKIP_RETURN_CODE 77
                       TIMEOUT ${T_TIMEOUT}
                       ENVIRONMENT "GN_SOURCE_DIR=${PROJECT_SOURCE_DIR};GN_BUILD_DIR=${PROJECT_BINARY_DIR}")
endfunction()
