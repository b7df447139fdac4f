# The distributed step loop (dist_backend.c) and the coordinator program.
# Included from coordinator/CMakeLists.txt.
add_library(genarm_coord_dist STATIC ${CMAKE_CURRENT_SOURCE_DIR}/dist_backend.c)
target_include_directories(genarm_coord_dist PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(genarm_coord_dist PUBLIC genarm_coord_http genarm_wire genarm_engine genarm_chat
                      genarm_control Threads::Threads m)

add_executable(coordinator ${CMAKE_CURRENT_SOURCE_DIR}/coordinator.c)
target_link_libraries(coordinator PRIVATE genarm_coord_dist genarm_coord_inproc)
